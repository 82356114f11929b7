"""Image files: which files of a folder are images, and reading one as 256x256 RGB uint8
(docs/design.md#image-handling)."""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from lib.cli import DataWarning, UserError

IMAGE_SIZE = 256
REAL_LABEL, FAKE_LABEL = 0, 1
CLASS_DIRS = ("real", "fake")  # label 0, label 1: the course's class folders
CLASS_DIR_LAYOUTS = (CLASS_DIRS, ("0_real", "1_fake"))  # ... and the GAN-detection tools' (CNNDetection)


def class_dirs(split_folder: str) -> tuple[str, str] | None:
    """The (real, fake) class folders of a split folder: ``real/`` and ``fake/``, else ``0_real/``
    and ``1_fake/``; ``None`` when it holds neither pair."""
    for layout in CLASS_DIR_LAYOUTS:
        if all(os.path.isdir(os.path.join(split_folder, d)) for d in layout):
            return layout
    return None


# Refuse decompression bombs early: a face image here is 256x256; allow generous real photos.
Image.MAX_IMAGE_PIXELS = 8192 * 8192


class DataError(UserError, ValueError):
    """A data problem the user must fix; the message names the file or folder."""


# Raster photo formats only: PIL also "reads" .pdf, .eps, .ps, .h5, .mpg, .emf ..., which are
# documents, containers or vector files, not face images.
RASTER_EXTENSIONS = (
    ".png",
    ".apng",
    ".jpg",
    ".jpeg",
    ".jpe",
    ".jfif",
    ".bmp",
    ".dib",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
    ".tga",
    ".jp2",
    ".j2k",
    ".jpx",
    ".avif",
    ".qoi",
    ".pcx",
    ".sgi",
)


def _image_extensions() -> frozenset[str]:
    """The raster extensions that this PIL build can read."""
    Image.init()
    return frozenset(RASTER_EXTENSIONS) & frozenset(ext.lower() for ext in Image.registered_extensions())


IMAGE_EXTENSIONS = _image_extensions()
DEMO_HINT = "make demo data with: python make_demo_datasets.py --out data/demo"


def is_image_file(path: str) -> bool:
    """True for a regular, non-hidden file (or a broken symbolic link, so that reading it reports
    it instead of dropping it unseen) with a raster image extension."""
    name = os.path.basename(path)
    if name.startswith(".") or not (os.path.isfile(path) or is_broken_link(path)):
        return False
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def is_broken_link(path: str) -> bool:
    """True for a symbolic link whose target does not exist."""
    return os.path.islink(path) and not os.path.exists(path)


def list_images(folder: str) -> list[str]:
    """Sorted image file names in ``folder``; non-images and sub-folders are ignored."""
    return sorted(name for name in os.listdir(folder) if is_image_file(os.path.join(folder, name)))


def _grey_peak(mode: str, array: np.ndarray, file_format: str | None = None) -> float:
    """The value that is white in a 16-bit, 32-bit or float grey image. 16-bit files have a bit
    depth: scale by it, not by the file's own maximum (Pillow reads a 16-bit PGM as ``I``, scaled
    to 16 bits). Other 32-bit integer (``I``) and float (``F``) files carry no bit depth: the
    smallest usual range holding the values (8 bits, 16 bits, the full 32 bits; floats also
    [0, 1]), so 8-bit values stored in 32 bits do not load black."""
    if mode.startswith("I;16") or (mode == "I" and file_format == "PPM"):
        return 65535.0
    top = array.max(initial=0)
    if mode == "F" and top <= 1.0:
        return 1.0
    for peak in (255.0, 65535.0):
        if top <= peak:
            return peak
    return 2.0**31 - 1


def _to_rgb(image: Image.Image, file_format: str | None = None) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (grayscale, RGBA, palette, CMYK, 16-bit, 32-bit, float);
    ``file_format``: Pillow's name of the file's format (a copy of the image has none)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        white = _grey_peak(image.mode, array, file_format)
        array = np.clip(np.rint(array * (255.0 / white)), 0, 255).astype(np.uint8)
        image = Image.fromarray(array, mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image if image.mode == "RGB" else image.convert("RGB")


CORRUPT_HINT = "replace or delete the file, or pass --skip_corrupt"


def read_rgb_image(path: str, hint: str = CORRUPT_HINT) -> Image.Image:
    """Open ``path`` as an RGB PIL image, turned upright by its EXIF orientation (as phone photos
    need); any failure raises ``DataError`` naming the file, ending with ``hint`` when given."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return _to_rgb(ImageOps.exif_transpose(image), image.format)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(
            f"{path}: refused, declared image size is too large (possible decompression bomb): {exc}"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(
            f"{path}: cannot read image ({type(exc).__name__}: {exc})" + (f"; {hint}" if hint else "")
        ) from None


def pil_to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """HWC uint8 PIL image -> CHW uint8 tensor (no scaling)."""
    return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()


def load_image_tensor(path: str, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Read ``path`` as a 3 x size x size uint8 tensor, resizing (with a warning) when needed."""
    image = read_rgb_image(path)
    if image.size != (size, size):
        warnings.warn(
            f"{path}: image is {image.size[0]}x{image.size[1]}, resized to {size}x{size}",
            DataWarning,
            stacklevel=2,
        )
        image = image.resize((size, size), Image.BILINEAR)
    return pil_to_uint8_tensor(image)
