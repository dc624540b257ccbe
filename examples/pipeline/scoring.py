"""A local module the compare step imports: editing it invalidates that step's cache."""


def summary(scores: dict[str, float]) -> tuple[str, str]:
    best = max(scores, key=scores.get)
    table = "\n".join(f"{name:24} {score:.4f}" for name, score in sorted(scores.items()))
    return best, table
