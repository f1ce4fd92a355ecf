"""Media types: parsing `Accept` and `Content-Type` headers with their parameters (RFC 9110)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MediaRange:
    """One media range of an Accept header (or a Content-Type): `type/subtype` and parameters.

    Parameter names are lower-cased; values keep their case with quotes removed. `q` is the
    quality (1.0 when absent).
    """

    media_type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    def param(self, name: str) -> str | None:
        return self.params.get(name)

    def matches(self, media_type: str) -> bool:
        """Whether this range accepts `media_type` (wildcards `*/*` and `type/*` included)."""
        if self.media_type in ("*/*", media_type):
            return True
        main, _, sub = self.media_type.partition("/")
        return sub == "*" and media_type.split("/", 1)[0] == main


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts, current, quoted = [], [], False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def parse_media_type(text: str) -> MediaRange:
    """Parse one `type/subtype; name=value; ...` (a Content-Type or one Accept entry)."""
    pieces = _split_outside_quotes(text, ";")
    media_type = pieces[0].strip().lower()
    params: dict[str, str] = {}
    q = 1.0
    for piece in pieces[1:]:
        name, sep, value = piece.strip().partition("=")
        if not sep:
            continue
        name = name.strip().lower()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if name == "q":
            try:
                q = max(0.0, min(1.0, float(value)))
            except ValueError:
                q = 1.0
        else:
            params[name] = value
    return MediaRange(media_type, params, q)


def parse_accept(header: str | None) -> list[MediaRange]:
    """The media ranges of an Accept header, best first; `*/*` when the header is absent or empty."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges = [parse_media_type(part) for part in _split_outside_quotes(header, ",") if part.strip()]
    ranges = [r for r in ranges if r.q > 0 and r.media_type]
    # Stable sort: equal qualities keep the client's order.
    return sorted(ranges, key=lambda r: -r.q)
