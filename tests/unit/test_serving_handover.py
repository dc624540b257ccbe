"""The runtime's hand-over options are checked before anything is loaded or bound."""

from __future__ import annotations

from nbscale.serving import server, zygote


def _main(tmp_path, *extra: str) -> int:
    token = tmp_path / "token"
    token.write_text("t")
    return server.main(["--model-dir", str(tmp_path), "--token-file", str(token), *extra])


def test_listen_fd_without_the_routers_port_file_is_refused(tmp_path, capsys):
    assert _main(tmp_path, "--listen-fd", "5") == 2
    assert "--listen-fd needs --router-port-file" in capsys.readouterr().err


def test_front_limits_out_of_range_or_unknown_are_refused(tmp_path, capsys):
    assert _main(tmp_path, "--front-limits", '{"max_body": -1}') == 2
    assert "max_body must be more than 0" in capsys.readouterr().err
    assert _main(tmp_path, "--front-limits", '{"nonsense": 1}') == 2
    assert "nonsense" in capsys.readouterr().err


def test_the_zygote_wants_its_channel_and_parent(capsys):
    assert zygote.main([]) == 2
    assert zygote.main(["x", "1"]) == 2
    assert (
        "usage: python -m nbscale.serving.zygote CHANNEL_FD PARENT_PID" in capsys.readouterr().err
    )
