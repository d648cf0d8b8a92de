"""Print, as pinned requirements, the frameworks the base image already has.

docker/jupyter/Dockerfile installs its packages together with these pins, so pip's resolver
keeps the base's torch / tensorflow / numpy (built for its CUDA or ROCm) and respects their
own dependency bounds instead of upgrading them away. Prints nothing for a plain Python base.
"""

import importlib.metadata

KEEP = {"numpy", "torch", "torchvision", "torchaudio", "tensorflow", "tensorflow-rocm",
        "keras", "tf-keras", "jax", "jaxlib"}

pins = set()
for dist in importlib.metadata.distributions():
    name = (dist.metadata["Name"] or "").lower().replace("_", "-")
    if name in KEEP:
        pins.add(f"{name}=={dist.version}")
print("\n".join(sorted(pins)))
