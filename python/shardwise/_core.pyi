"""Type stubs for the C++ extension (internal; use shardwise.dcp and
shardwise.Checkpointer). The option keywords are those of `shardwise
options`; every other argument is a typed object below."""
from typing import Any, Callable, Optional

__version__: str
MANIFEST_NAME: str  # "manifest.json" (shardwise/names.h)

class CorruptCheckpointError(Exception):
    path: Optional[str]

class AbortedError(RuntimeError):
    path: Optional[str]

class UnavailableError(RuntimeError):
    path: Optional[str]

class SaveSpec:
    name: str
    step: int
    save_id: str
    world_size: int
    rank: int
    replace: bool
    user_json: str
    dcp_json: str
    gathered: bool  # ranks return RankResult.index; the coordinator calls commit_gathered
    def __init__(self, name: str = "", step: int = -1, save_id: str = "", world_size: int = 1,
                 rank: int = 0, replace: bool = False, user_json: str = "{}",
                 dcp_json: str = "", gathered: bool = False) -> None: ...

class WriteItem:
    name: str
    kind: str  # "tensor" | "bytes"
    dtype: str
    global_shape: list[int]
    chunk_offsets: list[int]
    chunk_sizes: list[int]
    address: int
    nbytes: int
    def __init__(self, name: str, kind: str, dtype: str, global_shape: list[int],
                 chunk_offsets: list[int], chunk_sizes: list[int], address: int,
                 nbytes: int) -> None: ...

class ReadRequest:
    item: str
    chunk: int
    nbytes: int
    def __init__(self, item: str, chunk: int = 0, offsets: list[int] = ...,
                 lengths: list[int] = ..., *, address: int, nbytes: int,
                 dst_shape: list[int] = ..., dst_offsets: list[int] = ...) -> None: ...

class RankResult:
    shard_path: str
    bytes: int
    seconds: float
    backend: str
    direct_io: bool
    copied_bytes: int
    index: bytes  # with SaveSpec.gathered: this rank's shard index (binary)

class CommitResult:
    name: str
    dir: str
    bytes: int
    latest_updated: bool
    latest_error: str  # empty unless `latest` (a hint) could not be moved after the commit
    export_error: str  # empty unless an S3 export was requested and the request failed

class ExportInfo:
    state: str  # "not requested", "pending", "exported", "failed"
    detail: str

class CheckpointInfo:
    state: str  # "committed", "invalid", "staging", "leftover"
    name: str
    dir_name: str
    step: int
    world_size: int
    bytes: int
    created_unix: float
    save_id: str
    items: int
    is_latest: bool
    active: bool
    problem: str
    export_info: Optional[ExportInfo]

class GcReport:
    removed_staging: list[str]
    removed_checkpoints: list[str]
    kept: list[str]
    kept_unexported: list[str]
    newest_valid: str
    dry_run: bool
    errors: list[str]

class VerifyProblem:
    file: str
    code: str
    message: str

class VerifyReport:
    bytes_checked: int
    files_checked: int
    problems: list[VerifyProblem]

class StagingStats:
    allocations: int
    reserved_bytes: int
    leased_bytes: int
    slabs: int
    leased: int

class Event:
    def __init__(self) -> None: ...
    def set(self) -> None: ...
    def is_set(self) -> bool: ...
    def wait(self, timeout_s: float = -1.0) -> bool: ...

class Repository:
    def __init__(self, root: str, options: dict[str, Any], create: bool = True) -> None: ...
    @property
    def root(self) -> str: ...
    def write_rank(self, spec: SaveSpec, items: list[WriteItem],
                   released: Optional[Event] = None) -> RankResult: ...
    def commit(self, spec: SaveSpec) -> CommitResult: ...
    def commit_gathered(self, spec: SaveSpec, indexes: list[bytes]) -> CommitResult: ...
    def wait_committed(self, spec: SaveSpec, timeout_s: float) -> None: ...
    def report_failure(self, spec: SaveSpec, why: str) -> None: ...
    def lock_for_writing(self) -> None: ...
    def filesystem_summary(self) -> str: ...
    def list(self, with_exports: bool = False) -> list[CheckpointInfo]: ...
    def latest(self) -> Optional[str]: ...
    def delete(self, name: str, damaged_too: bool = False) -> None: ...
    def install(self, name: str, files: list[tuple[str, int, int]], data: Any) -> None: ...
    def gc(self, keep_last: Optional[int] = None, keep_every: Optional[int] = None,
           dry_run: bool = False, grace_s: Optional[float] = None,
           verify: bool = False) -> GcReport: ...

class Reader:
    def __init__(self, dir: str, options: dict[str, Any]) -> None: ...
    def manifest_json(self) -> str: ...
    def read(self, requests: list[ReadRequest]) -> None: ...
    def check_files(self) -> None: ...
    def verify(self) -> VerifyReport: ...

class StagingLease:
    address: int
    size: int
    fresh: bool
    staged: bool
    released: bool
    copied_bytes: int
    def memory(self) -> Any: ...
    def stage(self, copies: list[tuple[int, int, int]], threads: int = 0) -> None: ...
    def stage_in_background(self, copies: list[tuple[int, int, int]], threads: int = 0) -> None: ...
    def wait_staged(self) -> None: ...
    def release(self) -> None: ...

def acquire_staging(kind: str, nbytes: int) -> StagingLease: ...
def set_staging_allocator(kind: str, allocate: Callable[[int], tuple[int, int, Any]]) -> None: ...
def staging_stats(kind: str = "pageable") -> StagingStats: ...
def release_staged(addresses: list[int]) -> list[int]: ...
def adopt_staged(address: int, size: int,
                 extents: list[tuple[int, int]]) -> Optional[StagingLease]: ...
def release_staging() -> None: ...
def copied_state_bytes() -> int: ...
def parse_size(text: str) -> int: ...
def cli_main(argv: list[str], direct: bool = False) -> int: ...
def check_options(options: dict[str, Any]) -> None: ...
def check_target(dir: str, replace: bool) -> None: ...
