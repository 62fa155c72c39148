"""LeRobotDataset v3.0 writer and v3.0 / v2.1 reader: the one import point for the format.

Writer: `lerobot_write.py` (layout, statistics, PNG and mp4 sizes, atomicity) with `lerobot_video.py`
(mp4 camera streams: codecs, per-episode timestamps). Reader:
`lerobot_read.py` (the `Dataset`) with `lerobot_layout.py`, `lerobot_files.py`, `lerobot_frames.py`,
`lerobot_stats.py`; fitting a dataset to a policy: `lerobot_checks.py`. Mapping a dataset's names onto the
policy's and choosing its statistics: `mapping.py`.
"""

from z1.data.errors import DatasetError
from z1.data.lerobot_checks import check_compatible, check_images
from z1.data.lerobot_frames import Episode, ImageSequence, decode_video_frames
from z1.data.lerobot_read import Dataset, open_dataset
from z1.data.lerobot_write import CODEBASE_VERSION, LeRobotWriter, encode_png, make_features
from z1.data.mapping import DataConfig

__all__ = [
    "CODEBASE_VERSION",
    "DataConfig",
    "Dataset",
    "DatasetError",
    "Episode",
    "ImageSequence",
    "LeRobotWriter",
    "check_compatible",
    "check_images",
    "decode_video_frames",
    "encode_png",
    "make_features",
    "open_dataset",
]
