"""Hook-based capture with streamed statistics."""

from workbench.capture.capture import KEEP_OPTIONS, capture
from workbench.capture.hooks import hooks_attached, resolve_sites
from workbench.capture.result import CaptureResult, SiteStats

__all__ = ["KEEP_OPTIONS", "CaptureResult", "SiteStats", "capture", "hooks_attached", "resolve_sites"]
