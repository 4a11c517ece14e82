"""facefusion-fn's fusion pipeline: image bytes and options in, image bytes and a face report out.

`load_fuser(settings)` builds the one public entry, `Fuser`; `prepare(settings)` builds derived
artefacts ahead of serving. The rest of this package is private to it. The pipeline never sees HTTP,
events or URIs.

The package's names are imported when first used (PEP 562 `__getattr__`), not when the package is:
`pipeline.config` is then read without numpy, OpenCV and ONNX Runtime, so a process that only reads
settings (the WORKERS supervisor, the CLI's argument errors) does not pay ~0.2 s and ~100 MB for them,
and a serving process can start its GPU's context before they load (function/serve.py).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "ConfigError": "config",
    "EnvReader": "config",
    "ImageLimits": "config",
    "Settings": "config",
    "VideoLimits": "config",
    "EmptyImage": "errors",
    "FaceError": "errors",
    "ImageError": "errors",
    "ImageTooLarge": "errors",
    "InvalidOptions": "errors",
    "ModelSetInvalid": "errors",
    "ModelSetMissing": "errors",
    "NoMatchingFace": "errors",
    "NoReferenceFace": "errors",
    "NoSourceFace": "errors",
    "NoTargetFace": "errors",
    "PipelineError": "errors",
    "ProviderUnavailable": "errors",
    "RuntimeFailure": "errors",
    "UndecodableImage": "errors",
    "UnsupportedImageType": "errors",
    "VideoError": "errors",
    "atomic_symlink": "files",
    "atomic_write": "files",
    "Fuser": "fuser",
    "EncodedFusion": "fusion_types",
    "FuseOptions": "fusion_types",
    "FusionReport": "fusion_types",
    "FusionResult": "fusion_types",
    "OUTPUT_FORMATS": "images",
    "DecodedImage": "images",
    "checked_format": "images",
    "decode_image": "images",
    "encode_image": "images",
    "normalise_format": "images",
    "ModelBundle": "loader",
    "load_fuser": "loader",
    "load_models": "loader",
    "prepare": "loader",
    "ModelEntry": "manifest",
    "ModelSet": "manifest",
    "manifest_document": "manifest",
    "parse_manifest": "manifest",
    "plain_name": "manifest",
    "read_manifest": "manifest",
    "write_manifest_file": "manifest",
    "VerdictCache": "model_store",
    "open_model_set": "model_store",
    "sha256_file": "model_store",
    "FACE_MODES": "selection:MODES",
    "Selection": "selection",
    "StageTimer": "timing",
}


def __getattr__(name: str) -> Any:
    """Import the submodule that defines `name` on first use and keep the name here."""
    where = _EXPORTS.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, _, attribute = where.partition(":")
    try:
        module = import_module(f".{module_name}", __name__)
    except AttributeError as exc:  # raised inside that import: Python would report it as "cannot import name"
        raise ImportError(f"importing {__name__}.{module_name} for {name!r} failed: {exc}") from exc
    value = getattr(module, attribute or name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})

__all__ = list(_EXPORTS)  # the one list of names: the table above
