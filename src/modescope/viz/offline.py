"""The Content-Security-Policy every self-contained HTML output carries: no network access at all.

The pages modescope writes (reports, prompt-set pages, multiverse, frontier, samples, forks, attractors, lab
reports) show model text, which is untrusted. They escape it, and this policy is the second line: even if some
markup slipped through, the page could not load a script, send a request, submit a form or fetch an image
from anywhere. A page gets only what it needs: its own inline `<style>` and style attributes always,
inline `<script>` only when it runs one, and `data:` images only when it embeds figures.

The policy travels in a `<meta http-equiv>` element (the pages are opened as files, with no server to send
a header). It must come first in `<head>`, since a meta policy applies only to what follows it. Pages shown in
a `srcdoc` iframe inherit the policy of the page that embeds them, so a page embedding script-running pages
(the report, the prompt-set page) needs `scripts=True` even without a script of its own.
"""

from __future__ import annotations


def offline_policy(*, scripts: bool = False, images: bool = False) -> str:
    """The policy text: everything forbidden but inline styles, and inline scripts / `data:` images if asked."""
    return "; ".join(
        [
            "default-src 'none'",
            "connect-src 'none'",
            "script-src " + ("'unsafe-inline'" if scripts else "'none'"),
            "style-src 'unsafe-inline'",
            "img-src " + ("data:" if images else "'none'"),
            "base-uri 'none'",
            "form-action 'none'",
        ]
    )


def offline_csp(*, scripts: bool = False, images: bool = False) -> str:
    """The `<meta>` element carrying `offline_policy`, to put first in a page's `<head>`."""
    policy = offline_policy(scripts=scripts, images=images)
    return f'<meta http-equiv="Content-Security-Policy" content="{policy}">'
