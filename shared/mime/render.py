"""HTML bodies as readable plain text: paragraphs, line breaks, list items, and links as "text (url)".

Rendered with inscriptis (a layout-aware HTML-to-text renderer), imported lazily: it costs ~37 ms of
import here, which only a call that meets an HTML-only message pays. A link whose text is its own address
is written once. Invariant: never raises; HTML the renderer cannot take falls back to the tags stripped.
"""

from __future__ import annotations

import html
import logging
import re
from typing import Any

logger = logging.getLogger(__name__)

_TAGS = re.compile(r"<[^>]*>")
_BLANK_RUNS = re.compile(r"\n{3,}")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
# "x (x)": a link written as its own address, or a mailto: link showing its address.
_REPEATED_LINK = re.compile(r"(?<!\S)(\S+) \(\1\)")

_config: Any = None


def _parser_config() -> Any:
    """inscriptis' configuration with our <a> handlers, built once per instance."""
    global _config
    if _config is None:
        from inscriptis.model.config import ParserConfig
        from inscriptis.model.tag import CustomHtmlTagHandlerMapping

        def a_start(state: Any, attrs: dict[str, Any]) -> None:
            href = attrs.get("href") or ""
            state.link_target = href if isinstance(href, str) else ""

        def a_end(state: Any) -> None:
            target = (state.link_target or "").strip()
            if target and not target.startswith(("#", "javascript:")):
                state.tags[-1].write(f" ({target.removeprefix('mailto:')})")
            state.link_target = ""

        mapping = CustomHtmlTagHandlerMapping(start_tag_mapping={"a": a_start}, end_tag_mapping={"a": a_end})
        _config = ParserConfig(custom_html_tag_handler_mapping=mapping)
    return _config


def html_to_text(markup: str) -> str:
    """A readable plain-text rendering of an HTML body.

    Args:
        markup: The HTML, already decoded to Unicode.

    Returns:
        The text: block elements on their own lines, list items as ``* item``, links as ``text (url)``,
        no more than one blank line in a row, no trailing spaces.
    """
    try:
        from inscriptis import get_text

        text = get_text(markup, _parser_config())
    except Exception:  # a renderer bug must not cost the reader the message
        logger.warning("HTML rendering failed; falling back to stripped tags", exc_info=True)
        text = html.unescape(_TAGS.sub(" ", markup))
    text = _REPEATED_LINK.sub(r"\1", text)
    text = _TRAILING_SPACE.sub("\n", text)
    return _BLANK_RUNS.sub("\n\n", text).strip("\n")
