"""Is a response a web page rather than a media file? Told from its first bytes.

A link to a page (a post, a player) answers with HTML; the direct downloader then hands the page
to yt-dlp's extractors, and a "video" yt-dlp saved that is really a page is refused.
"""

from __future__ import annotations

SNIFF_BYTES = 512
# WHATWG MIME sniffing: a body starting with one of these tags (then space or '>') is HTML.
_HTML_TAGS = (
    b"<!doctype html",
    b"<html",
    b"<head",
    b"<script",
    b"<iframe",
    b"<h1",
    b"<div",
    b"<font",
    b"<table",
    b"<a",
    b"<style",
    b"<title",
    b"<b",
    b"<body",
    b"<br",
    b"<p",
    b"<!--",
    b"<?xml",
    b"<meta",
    b"<link",
)


def looks_like_html(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n\x0c").lower()
    for tag in _HTML_TAGS:
        if text.startswith(tag):
            rest = text[len(tag) : len(tag) + 1]
            if tag in (b"<!--", b"<?xml") or rest in (b" ", b">", b"\t", b"\n", b"\r", b"/"):
                return True
    return False
