"""The Hugging Face Hub, as ``core.weights`` needs it: list a repository, download one file (into
huggingface_hub's own cache, with its tqdm progress bar), and say plainly when the Hub cannot be
reached (``HF_HUB_OFFLINE=1``, no network, gated repository) with how to place the file by hand."""
from __future__ import annotations

import os
from pathlib import Path

from core.weights.registry import Entry


class HubUnreachable(RuntimeError):
    """The Hub could not give a file; the message says which, why, and the by-hand route."""


class HubFileMissing(ValueError):
    """The repository answered but does not hold the file (or no file matched the rule)."""


_NO_NETWORK: list[str] = []   # why the Hub's host was found unreachable (probed once per process)
_probed: list[bool] = []


def offline() -> bool:
    """HF_HUB_OFFLINE=1, or the Hub's host did not answer a quick probe: use the local cache only
    (huggingface_hub would otherwise retry for ~25 s before failing)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    if not _NO_NETWORK and not _probed:
        _probe()
    return bool(_NO_NETWORK)


def _probe(timeout: float = 4.0) -> None:
    import socket
    from urllib.parse import urlparse
    from huggingface_hub import constants
    _probed.append(True)
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return  # a proxy decides: let huggingface_hub try
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as e:
        _NO_NETWORK.append(f"no network: cannot connect to {host} ({e.strerror or e})")


def file_url(e: Entry, filename: str) -> str:
    kind = "datasets/" if e.repo_type == "dataset" else ""
    return f"https://huggingface.co/{kind}{e.repo}/resolve/main/{filename}"


def unreachable(e: Entry, filename: str | None, why: str) -> HubUnreachable:
    what = filename or "the file list"
    where = file_url(e, filename) if filename else f"https://huggingface.co/{'datasets/' if e.repo_type == 'dataset' else ''}{e.repo}"
    return HubUnreachable(f"cannot reach the Hugging Face Hub for {e.name} ({e.repo}: {what}): {why}. "
                          f"Place it by hand: download {where} on a machine with network, then run "
                          f"python -m core.weights fetch {e.name} --from /path/to/{Path(filename).name if filename else 'FILE'}")


def _why(err: BaseException) -> str:
    from huggingface_hub import errors
    if isinstance(err, errors.GatedRepoError):
        return "the repository is gated: accept its terms on the Hub and log in (hf auth login)"
    if _NO_NETWORK:
        return f"{_NO_NETWORK[0]} and the file is not in the local Hub cache"
    if isinstance(err, errors.OfflineModeIsEnabled) or offline():
        return "offline mode (HF_HUB_OFFLINE=1) and the file is not in the local Hub cache"
    return f"no connection ({type(err).__name__})"


def list_files(e: Entry) -> list[str]:
    """The repository's file paths: from the Hub, else from a cached snapshot (offline)."""
    from huggingface_hub import HfApi, errors, snapshot_download
    failure: BaseException = RuntimeError()
    if not offline():
        try:
            return list(HfApi().list_repo_files(e.repo, repo_type=e.repo_type))
        except errors.GatedRepoError as err:
            failure = err
        except errors.RepositoryNotFoundError as err:
            raise HubFileMissing(f"{e.repo}: repository not found on the Hub ({err})") from None
        except Exception as err:  # connection errors come in several library types
            failure = err
    try:
        folder = Path(snapshot_download(e.repo, repo_type=e.repo_type, local_files_only=True))
    except Exception:
        raise unreachable(e, None, _why(failure)) from None
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def download(e: Entry, filename: str, optional: bool = False) -> Path | None:
    """Local path of ``filename`` (downloaded, or from the cache when offline); ``optional`` files
    that the repository lacks or that cannot be fetched give None."""
    from huggingface_hub import errors, hf_hub_download
    try:
        return Path(hf_hub_download(e.repo, filename, repo_type=e.repo_type, local_files_only=offline()))
    except (errors.GatedRepoError, errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled) as err:
        failure = err   # not reachable from here (gated, offline, not cached)
    except errors.RemoteEntryNotFoundError as err:
        if optional:
            return None
        raise HubFileMissing(f"{e.repo} has no file {filename} ({err})") from None
    except errors.RepositoryNotFoundError as err:
        raise HubFileMissing(f"{e.repo}: repository not found on the Hub ({err})") from None
    except Exception as err:  # no network, timeouts: several library types
        failure = err
    if optional:
        return None
    raise unreachable(e, filename, _why(failure))
