"""Ground-truth instance masks as maps: the oracle teacher for tests and the benchmark's upper line.

Looks each request's (image, box) up in the COCO annotations and returns the object's mask, normalised. Masks
are COCO segmentations: uncompressed RLE (the synthetic set) is decoded here, polygons and compressed RLE
through pycocotools. An object without a segmentation gets its box as the map.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.student.maps import MapRequest
from shared.coco import CocoDataset, CocoObject, rle_to_mask


def _mask(item: CocoObject, height: int, width: int) -> np.ndarray:
    segmentation = item.segmentation
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        return rle_to_mask(segmentation)
    if segmentation:
        from pycocotools import mask as coco_mask

        rles = coco_mask.frPyObjects(segmentation, height, width)
        return coco_mask.decode(coco_mask.merge(rles) if isinstance(rles, list) else rles).astype(bool)
    x, y, w, h = (round(v) for v in item.bbox)
    box = np.zeros((height, width), bool)
    box[y : y + h, x : x + w] = True
    return box


class InstanceMaskMaps:
    def __init__(self, dataset: CocoDataset) -> None:
        self.objects: dict[tuple[str, tuple[float, ...]], tuple[CocoObject, int, int]] = {}
        splits = [dataset.train, dataset.val, *dataset.heldout.values()]
        for split in (s for s in splits if s is not None):
            for image in split.images:
                for item in image.objects:
                    x, y, w, h = item.bbox
                    self.objects[(image.rel, (x, y, x + w, y + h))] = (item, image.height, image.width)

    def fetch(self, requests: Sequence[MapRequest]) -> list[np.ndarray | None]:
        out: list[np.ndarray | None] = []
        for request in requests:
            found = self.objects.get((request.sample.rel, tuple(request.box or ())))
            if found is None:
                out.append(None)
                continue
            mask = _mask(*found).astype(np.float32)
            total = mask.sum()
            out.append(mask / total if total > 0 else None)
        return out
