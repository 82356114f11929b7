"""Real-vs-fake faces dataset (docs/design.md#data-contract).

A split folder (for example ``<data root>/fakes_dataset/train``) holds ``real/`` and ``fake/``.
``FacesDataset`` lists both (sorted file names, so runs repeat), indexes all real images first and
then all fakes, and returns ``(image, label)`` with label 0 = real and 1 = fake.
"""

from __future__ import annotations

import os
import warnings

import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from lib.cli import DataWarning
from lib.images import (  # noqa: F401  (re-exported: the image helpers the course module offered)
    CLASS_DIRS,
    DEMO_HINT,
    FAKE_LABEL,
    IMAGE_EXTENSIONS,
    IMAGE_SIZE,
    REAL_LABEL,
    DataError,
    class_dirs,
    is_broken_link,
    is_image_file,
    list_images,
    load_image_tensor,
    pil_to_uint8_tensor,
    read_rgb_image,
)


class FacesDataset(Dataset):
    """Faces of one split: all real images first, then all fakes.

    Args:
        root_path: a split folder holding ``real/`` and ``fake/`` (or ``0_real/`` and ``1_fake/``).
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
        self.class_dirs = class_dirs(root_path)
        if self.class_dirs is None:
            missing = [d for d in CLASS_DIRS if not os.path.isdir(os.path.join(root_path, d))]
            raise DataError(
                f"{root_path}: missing folder(s) {', '.join(missing)}; expected "
                f"<data root>/<dataset>/<train|val|test>/{{real,fake}}/*.png (or 0_real/ and "
                f"1_fake/); {DEMO_HINT}"
            )
        real_dir, fake_dir = self.class_dirs
        self.real_image_names = list_images(os.path.join(root_path, real_dir))
        self.fake_image_names = list_images(os.path.join(root_path, fake_dir))
        if skip_corrupt:
            self.real_image_names = self._drop_unreadable(real_dir, self.real_image_names)
            self.fake_image_names = self._drop_unreadable(fake_dir, self.fake_image_names)
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
        for class_dir, names in zip(self.class_dirs, (self.real_image_names, self.fake_image_names)):
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
        for class_dir, names in zip(self.class_dirs, (self.real_image_names, self.fake_image_names)):
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
                warnings.warn(f"skipped: {exc}", DataWarning, stacklevel=3)
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
            return os.path.join(self.root_path, self.class_dirs[0], self.real_image_names[index]), REAL_LABEL
        name = self.fake_image_names[index - n_real]
        return os.path.join(self.root_path, self.class_dirs[1], name), FAKE_LABEL

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
