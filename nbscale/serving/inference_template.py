# Written by nbscale: SageMaker PyTorch inference handlers for this model artifact.
# nbscale's serving runtime imports this file and calls model_fn / input_fn /
# predict_fn / output_fn (the SageMaker PyTorch handler contract). Edit freely.
import io
import json
import os

import numpy as np
import torch

MODEL_FILE = "__MODEL_FILE__"
FORMAT = "__FORMAT__"


_DEVICE = None


def _device():
    global _DEVICE
    if _DEVICE is None:  # once: torch.cuda.is_available() costs microseconds on every call
        wanted = os.environ.get("NBSCALE_DEVICE")
        cuda = torch.cuda.is_available()
        _DEVICE = torch.device(wanted) if wanted else torch.device("cuda" if cuda else "cpu")
    return _DEVICE


def model_fn(model_dir):
    path = os.path.join(model_dir, MODEL_FILE)
    if FORMAT == "torch.export":
        try:  # nbscale's runtime: the same graph without pytree and hook overhead per call
            from nbscale.serving.exported import load_program
        except ImportError:
            raise RuntimeError(
                "this model is served by nbscale's runtime, which is not installed here: "
                "serve it with the nbscale serving image (docker/Dockerfile; serving_image "
                "in the backend's config), not a stock framework container"
            ) from None
        return load_program(model_dir, _device())  # its lean form, if this torch wrote one
    # a pickled object: unpickle only an artifact whose signed file list still matches
    try:
        from nbscale.serving.artifact import verify
    except ImportError as exc:
        raise RuntimeError(
            f"{MODEL_FILE} is a pickle: install nbscale in the container so its signature "
            "can be checked before it is unpickled"
        ) from exc
    verify(model_dir)
    with open(path, "rb") as fh:
        payload = fh.read()
    import pickle

    return pickle.loads(payload)


def input_fn(body, content_type):
    if content_type in ("application/x-npy", "application/npy"):
        return torch.from_numpy(np.load(io.BytesIO(body), allow_pickle=False))
    if content_type.startswith("application/json"):
        return torch.as_tensor(np.asarray(json.loads(body), dtype=np.float32))
    raise ValueError(
        f"unsupported content type {content_type!r}; send application/json or application/x-npy"
    )


def predict_fn(data, model):
    if FORMAT == "torch.export":
        device = _device()
        with torch.inference_mode():
            if device.type == "cpu":
                return model(data)
            return model(data.to(device)).cpu()
    return np.asarray(model.predict(np.asarray(data)))


def output_fn(prediction, accept):
    array = prediction.numpy() if isinstance(prediction, torch.Tensor) else np.asarray(prediction)
    if accept in ("application/x-npy", "application/npy"):
        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=False)
        return buf.getvalue()
    return json.dumps(array.tolist())
