"""Real-vs-fake faces dataset (docs/design.md#data-contract).

A split folder (for example ``<data root>/fakes_dataset/train``) holds ``real/`` and ``fake/``.
``FacesDataset`` lists both (sorted file names, so runs repeat), indexes all real images first and
then all fakes, and returns ``(image, label)`` with label 0 = real and 1 = fake.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset
from tqdm import tqdm

from cli import UserError

IMAGE_SIZE = 256
REAL_LABEL, FAKE_LABEL = 0, 1
CLASS_DIRS = ("real", "fake")

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


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (grayscale, RGBA, palette, CMYK, 16-bit, float)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0  # integer grey is 16-bit: scale by the bit depth, not the file's own maximum
        if image.mode == "F":  # float grey has no bit depth: [0, 1], [0, 255] or 16-bit values
            peak = 1.0 if array.max(initial=0) <= 1.0 else (255.0 if array.max() <= 255 else 65535.0)
        array = np.clip(np.rint(array * (255.0 / peak)), 0, 255).astype(np.uint8)
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
                return _to_rgb(ImageOps.exif_transpose(image))
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
            f"{path}: image is {image.size[0]}x{image.size[1]}, resized to {size}x{size}", stacklevel=2
        )
        image = image.resize((size, size), Image.BILINEAR)
    return pil_to_uint8_tensor(image)


class FacesDataset(Dataset):
    """Faces of one split: all real images first, then all fakes.

    Args:
        root_path: a split folder holding ``real/`` and ``fake/``.
        transform: applied to each image. The project's own transform (``utils.get_transforms``,
            marked ``takes_uint8_tensor``) gets the 3x256x256 uint8 tensor; any other callable
            gets an RGB 256x256 PIL image, as classic torchvision transforms expect. ``None``
            returns the uint8 tensor.
        cache_images: decode every image once and keep the uint8 tensors in RAM (192 KiB each).
        skip_corrupt: check every file up front and drop unreadable ones with a warning instead of
            raising ``DataError`` when they are first read.
    """

    def __init__(
        self, root_path: str, transform=None, cache_images: bool = False, skip_corrupt: bool = False
    ):
        self.root_path = root_path
        self.transform = transform
        missing = [d for d in CLASS_DIRS if not os.path.isdir(os.path.join(root_path, d))]
        if missing:
            raise DataError(
                f"{root_path}: missing folder(s) {', '.join(missing)}; expected "
                f"<data root>/<dataset>/<train|val|test>/{{real,fake}}/*.png; {DEMO_HINT}"
            )
        self.real_image_names = list_images(os.path.join(root_path, "real"))
        self.fake_image_names = list_images(os.path.join(root_path, "fake"))
        if skip_corrupt:
            self.real_image_names = self._drop_unreadable("real", self.real_image_names)
            self.fake_image_names = self._drop_unreadable("fake", self.fake_image_names)
        else:
            self._refuse_broken_links()
        if len(self) == 0:
            raise DataError(f"{root_path}: no images in real/ or fake/; {DEMO_HINT}")
        self._cache: torch.Tensor | None = None
        if cache_images:
            self.cache_images()

    def _refuse_broken_links(self) -> None:
        """A broken symbolic link is an image that cannot be read: like a corrupt file it stops the
        run (here, before any work) unless --skip_corrupt skips it with a warning."""
        for class_dir, names in (("real", self.real_image_names), ("fake", self.fake_image_names)):
            broken = [n for n in names if is_broken_link(os.path.join(self.root_path, class_dir, n))]
            if broken:
                first = os.path.join(self.root_path, class_dir, broken[0])
                more = f" (and {len(broken) - 1} more in that folder)" if len(broken) > 1 else ""
                raise DataError(
                    f"{first}: broken symbolic link to {os.readlink(first)}{more}; "
                    "fix or delete the link, or pass --skip_corrupt"
                )

    def require_both_classes(self) -> None:
        """Raise ``DataError`` naming the class folder (real/ or fake/) that holds no image."""
        for class_dir, names in (("real", self.real_image_names), ("fake", self.fake_image_names)):
            if not names:
                raise DataError(
                    f"{os.path.join(self.root_path, class_dir)}: no images; this split "
                    "needs both real and fake images"
                )

    def _drop_unreadable(self, class_dir: str, names: list[str]) -> list[str]:
        kept = []
        for name in names:
            try:
                read_rgb_image(os.path.join(self.root_path, class_dir, name), hint="")
                kept.append(name)
            except DataError as exc:
                warnings.warn(f"skipped: {exc}", stacklevel=3)
        return kept

    def __len__(self) -> int:
        return len(self.real_image_names) + len(self.fake_image_names)

    @property
    def labels(self) -> torch.Tensor:
        """Labels of every index, without reading any image."""
        return torch.cat(
            [
                torch.zeros(len(self.real_image_names), dtype=torch.long),
                torch.ones(len(self.fake_image_names), dtype=torch.long),
            ]
        )

    def path_and_label(self, index: int) -> tuple[str, int]:
        """The file path and label of ``index`` (real images first, then fakes)."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images in {self.root_path}")
        n_real = len(self.real_image_names)
        if index < n_real:
            return os.path.join(self.root_path, "real", self.real_image_names[index]), REAL_LABEL
        return os.path.join(self.root_path, "fake", self.fake_image_names[index - n_real]), FAKE_LABEL

    def load_uint8(self, index: int) -> torch.Tensor:
        """The 3x256x256 uint8 image of ``index`` (from the cache when it is on)."""
        if self._cache is not None:
            return self._cache[index if index >= 0 else index + len(self)]
        return load_image_tensor(self.path_and_label(index)[0])

    def load_uint8_batch(self, indices: torch.Tensor) -> torch.Tensor:
        """The uint8 images of ``indices`` as one N x 3 x 256 x 256 tensor."""
        if self._cache is not None:
            return self._cache[indices]
        return torch.stack([self.load_uint8(int(i)) for i in indices])

    def cache_images(self, progress: bool = True) -> torch.Tensor:
        """Decode every image once into one N x 3 x 256 x 256 uint8 tensor kept in RAM."""
        if self._cache is None:
            cache = torch.empty((len(self), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
            for i in tqdm(
                range(len(self)),
                desc=f"caching {self.root_path}",
                unit="img",
                disable=not progress,
                leave=False,
            ):
                cache[i] = load_image_tensor(self.path_and_label(i)[0])
            self._cache = cache
        return self._cache

    @property
    def cached(self) -> bool:
        return self._cache is not None

    def __getitem__(self, index: int):
        """``(image, label)``: the transform's output; ``transform=None`` gives the uint8 tensor."""
        _, label = self.path_and_label(index)
        image = self.load_uint8(index)
        if self.transform is None:
            return image, label
        if not getattr(self.transform, "takes_uint8_tensor", False):
            # a classic torchvision transform (ToTensor, ...) expects a PIL image, as in the course
            image = Image.fromarray(image.permute(1, 2, 0).numpy())
        return self.transform(image), label
