"""Hook-based capture with streamed statistics."""

from workbench.capture.capture import KEEP_OPTIONS, capture
from workbench.capture.hooks import SITE_KINDS, StopForward, hooks_attached, resolve_sites, site, stoppable
from workbench.capture.result import CaptureResult, SiteStats

__all__ = ["KEEP_OPTIONS", "CaptureResult", "SiteStats", "capture", "SITE_KINDS", "StopForward", "hooks_attached",
           "resolve_sites", "site", "stoppable"]
