"""Image decoding and encoding with limits that hold before any pixel is allocated.

Pillow reads only the header on `Image.open`, so byte and pixel limits are checked first; the decode
itself then raises on truncated data instead of silently filling the missing rows with grey (as
OpenCV's `imdecode` does). EXIF orientation is applied, and every input mode (grayscale, palette,
RGBA, 16-bit, CMYK) comes out as 8-bit BGR for the models, with alpha kept aside for the output.
Complete JPEGs and whole, plain 8-bit PNGs (pipeline/png_chunks.py) are decoded by OpenCV, the faster
of the two, with Pillow's path behind it for what OpenCV cannot decode. Encoding uses OpenCV, which
works on BGR directly and is the faster encoder of the two.
With IMAGE_CODEC=nvimgcodec a `JpegCodec` (pipeline/gpu_jpeg.py) takes the place of OpenCV for complete
JPEGs and JPEG output; the header checks and limits still run first and every other input takes the same
paths as without it.
"""

from __future__ import annotations

import io
import logging
import posixpath
import warnings
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import ImageLimits
from .errors import EmptyImage, ImageTooLarge, InvalidOptions, UndecodableImage, UnsupportedImageType
from .jpeg_strip_decode import decode_in_strips, has_restarts
from .jpeg_strips import encode_in_strips
from .png_chunks import GRAY, png_layout

# We enforce our own pixel limit before decoding; Pillow's own (warning, then error at 2x) would only
# duplicate it with a different message.
Image.MAX_IMAGE_PIXELS = None
log = logging.getLogger("facefusion.images")

SUPPORTED_INPUT_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF", "MPO"})
OUTPUT_FORMATS = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
_FORMAT_ALIASES = {"jpg": "jpeg", "jpeg": "jpeg", "png": "png", "webp": "webp"}


class JpegCodec(Protocol):
    """A JPEG decoder/encoder in place of OpenCV's (pipeline/gpu_jpeg.py's GpuJpeg)."""

    def decode(self, data: bytes) -> np.ndarray | None: ...

    def encode(self, bgr: np.ndarray, quality: int) -> bytes: ...


@dataclass
class DecodedImage:
    """Pixels ready for the models: `bgr` is HxWx3 uint8; `alpha` is HxW uint8 or None."""

    bgr: np.ndarray
    alpha: np.ndarray | None = None
    source_format: str = ""

    @property
    def width(self) -> int:
        return int(self.bgr.shape[1])

    @property
    def height(self) -> int:
        return int(self.bgr.shape[0])


def normalise_format(name: str) -> str:
    """Map a user-given format name (jpg, JPEG, image/png, webp) to jpeg/png/webp."""
    key = name.strip().lower().removeprefix("image/")
    if key not in _FORMAT_ALIASES:
        raise InvalidOptions(f"unsupported output format {name!r}; use jpeg, png or webp")
    return _FORMAT_ALIASES[key]


def checked_format(given: str | None, path: str | None, option: str = "format") -> str | None:
    """`given` (normalised), else the format `path`'s extension names (`.jpg`: jpeg), else None. A `given`
    that the extension contradicts is refused rather than written (JPEG bytes in a .png): the function
    and the CLI answer alike, each naming its own `option`."""
    extension = posixpath.splitext(path)[1] if path else ""
    named = _FORMAT_ALIASES.get(extension.lstrip(".").lower())
    if not given:
        return named
    fmt = normalise_format(given)
    if named and fmt != named:
        raise InvalidOptions(f"{option} {given} disagrees with the output's extension {extension}: give one or the other")
    return fmt


def _to_bgr(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    alpha = None
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit grayscale: scale to 8 bits instead of clipping (convert('L') would saturate).
        arr = np.asarray(img, dtype=np.uint32 if mode == "I" else np.uint16)
        shift = 8 if mode != "I" or arr.max(initial=0) <= 0xFFFF else 24
        gray = (arr >> shift).astype(np.uint8)
        return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), None
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        top = float(arr.max(initial=0.0)) or 1.0
        gray = np.clip(arr * (255.0 / top if top > 255.0 else 1.0), 0, 255).astype(np.uint8)
        return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), None
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = np.asarray(img.convert("RGBA"))
        alpha = np.ascontiguousarray(rgba[:, :, 3])
        return cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGR), alpha
    if mode == "L":
        return cv2.cvtColor(np.asarray(img), cv2.COLOR_GRAY2BGR), None
    if mode != "RGB":
        img = img.convert("RGB")
    return cv2.cvtColor(np.asarray(img), cv2.COLOR_RGB2BGR), None


def _open_checked(data: bytes, limits: ImageLimits) -> Image.Image:
    """Open (header only) and check bytes, format and pixel count before anything is decoded."""
    if len(data) == 0:
        raise EmptyImage("the image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(f"the image is {len(data)} bytes; the limit is {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise UnsupportedImageType("the data is not a supported image (JPEG, PNG, WebP, BMP, TIFF)") from exc
    except Exception as exc:  # corrupt headers raise a zoo of errors inside Pillow's plugins
        raise UndecodableImage(f"the image header cannot be read: {exc}") from exc
    fmt = img.format or ""
    if fmt not in SUPPORTED_INPUT_FORMATS:
        raise UnsupportedImageType(f"image format {fmt or 'unknown'} is not supported")
    width, height = img.size
    if width <= 0 or height <= 0:
        raise UndecodableImage("the image has no pixels")
    if width * height > limits.max_pixels:
        raise ImageTooLarge(
            f"the image is {width}x{height} ({width * height} pixels); the limit is {limits.max_pixels}"
        )
    return img


def _complete_jpeg(data: bytes, fmt: str) -> bool:
    """A JPEG whose last bytes are the EOI marker: nothing was cut off.

    Entropy-coded data stuffs every 0xFF with 0x00, so FF D9 at the end can only be the EOI marker.
    Files with trailers after EOI (some cameras, MPO) take Pillow's stricter path instead.
    """
    return fmt == "JPEG" and data.rstrip(b"\x00").endswith(b"\xff\xd9")


def _upright(img: Image.Image) -> bool:
    """No EXIF orientation to apply (OpenCV turns only for values 2-8). EXIF that Pillow cannot read
    counts as not upright: the one-piece decode then has OpenCV's own reading of it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return img.getexif().get(0x0112, 1) not in range(2, 9)
    except Exception:  # Pillow raises SyntaxError, ValueError, struct.error ... on damaged EXIF
        return False


def opencv_decode(data: bytes) -> np.ndarray | None:
    """OpenCV's decode of a complete JPEG: BGR, EXIF orientation applied; None when it cannot. The default
    codec, and where IMAGE_CODEC=nvimgcodec sends an image while the GPU's decoder is busy."""
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def _opencv_png(data: bytes, size: tuple[int, int]) -> DecodedImage | None:
    """A whole, plain 8-bit PNG (pipeline/png_chunks.py) decoded by OpenCV, 1.15-1.35x faster than Pillow
    at it (bench/png_decode.py), with the pixels and alpha Pillow's path gives; None for any other PNG, or
    when OpenCV cannot decode it or gives another size than the header the limits were checked on
    (Pillow's path then decodes or gives the verdict)."""
    layout = png_layout(data)
    if layout is None or not layout.plain:
        return None
    # IMREAD_UNCHANGED: no turn (plain files carry no orientation), alpha kept, gray left one channel
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.dtype != np.uint8 or (pixels.shape[1], pixels.shape[0]) != size:
        return None
    if pixels.ndim == 2 and layout.colour_type == GRAY:
        return DecodedImage(bgr=cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR), alpha=None, source_format="png")
    channels = pixels.shape[2] if pixels.ndim == 3 else 0
    if channels == 3 and not layout.has_alpha:
        return DecodedImage(bgr=pixels, alpha=None, source_format="png")
    if channels == 4 and layout.has_alpha:  # gray+alpha comes as BGRA too, gray in all three
        return DecodedImage(bgr=cv2.cvtColor(pixels, cv2.COLOR_BGRA2BGR),
                            alpha=np.ascontiguousarray(pixels[:, :, 3]), source_format="png")
    return None


def opencv_encode(bgr: np.ndarray, quality: int) -> bytes:
    """OpenCV's JPEG of BGR pixels at `quality`: the default codec, and nvimgcodec's overflow. A large image
    is encoded in strips on several threads (pipeline/jpeg_strips.py: the same pixels, restart markers
    between the strips)."""
    data = encode_in_strips(bgr, quality)
    if data is None:  # OpenCV refuses an image past 65,500 pixels a side
        raise UndecodableImage("could not encode the result as jpeg")
    return data


def decode_image(data: bytes, limits: ImageLimits, codec: JpegCodec | None = None) -> DecodedImage:
    """Decode `data` into BGR pixels, honouring limits and EXIF orientation.

    Complete JPEGs go straight to OpenCV (which applies EXIF orientation itself and writes BGR without
    the intermediate copy Pillow's array export makes: 1080p in 8 ms instead of 21 ms), in strips on
    several threads when an upright one carries restart markers (pipeline/jpeg_strip_decode.py); every other
    input is decoded by Pillow, which raises on truncated data. `codec` (IMAGE_CODEC=nvimgcodec) decodes
    the complete JPEGs instead of OpenCV; what it cannot decode takes Pillow's path, as OpenCV's failures do.
    Whole, plain 8-bit PNGs go to OpenCV as well (`_opencv_png`), with Pillow's path behind it.
    """
    img = _open_checked(data, limits)
    fmt = img.format or ""
    if _complete_jpeg(data, fmt):
        bgr = None
        if codec is None and has_restarts(data) and _upright(img):  # cut at its restart markers
            try:
                bgr = decode_in_strips(data, size=img.size)  # the size the limits were checked on
            except Exception:  # a file that fools the cutting still gets the one-piece decode and its verdict
                log.debug("decoding in strips failed; decoding in one piece", exc_info=True)
        if bgr is None:
            bgr = codec.decode(data) if codec is not None else opencv_decode(data)
        if bgr is not None:
            return DecodedImage(bgr=bgr, alpha=None, source_format="jpeg")
    if fmt == "PNG":
        decoded = _opencv_png(data, img.size)
        if decoded is not None:
            return decoded
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
            # exif_transpose copies the whole image even when there is nothing to turn
            if img.getexif().get(0x0112, 1) not in (1, None):
                img = ImageOps.exif_transpose(img)
            bgr, alpha = _to_bgr(img)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UndecodableImage(f"the image cannot be decoded: {exc}") from exc
    return DecodedImage(bgr=bgr if bgr.flags.c_contiguous else np.ascontiguousarray(bgr), alpha=alpha,
                        source_format=fmt.lower())


def encode_image(image: DecodedImage, fmt: str = "jpeg", quality: int = 92,
                 codec: JpegCodec | None = None) -> tuple[bytes, str]:
    """Encode to jpeg/png/webp; returns (bytes, media type). Alpha survives in PNG and WebP.

    `codec` (IMAGE_CODEC=nvimgcodec) encodes JPEG output instead of OpenCV."""
    fmt = normalise_format(fmt)
    if not 1 <= quality <= 100:
        raise InvalidOptions(f"quality must be between 1 and 100, got {quality}")
    if fmt == "jpeg":
        return (codec.encode if codec is not None else opencv_encode)(image.bgr, quality), OUTPUT_FORMATS[fmt]
    pixels = image.bgr
    if image.alpha is not None:
        pixels = np.dstack([pixels, image.alpha])
    params = [cv2.IMWRITE_WEBP_QUALITY, quality] if fmt == "webp" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, buf = cv2.imencode("." + fmt, pixels, params)
    if not ok:  # pragma: no cover - OpenCV fails only on impossible shapes
        raise UndecodableImage(f"could not encode the result as {fmt}")
    return buf.tobytes(), OUTPUT_FORMATS[fmt]
