"""What the service is: its version, result schema and models (``/v1/version``), and the
model card (``/v1/model-card``)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import APIRouter

from pipeline.errors import DfdError
from pipeline.result import SCHEMA_VERSION
from pipeline.version import __version__
from serve.context import ApiContext
from serve.routes.access import Caller

__all__ = ["about_router"]


def about_router(ctx: ApiContext) -> APIRouter:
    """The service's self-description routes (for any caller with a valid key)."""
    router = APIRouter()

    @router.get("/v1/version", tags=["service"])
    async def version(_: Caller) -> dict[str, Any]:
        """Service version (paper 5.3: x.y.z), result schema version and deployed models."""
        models = ensemble = None
        with contextlib.suppress(Exception):
            described = await asyncio.wait_for(ctx.runner.describe(), timeout=5)
            models, ensemble = described["models"], described.get("ensemble")
        return {
            "service_version": __version__,
            "schema_version": SCHEMA_VERSION,
            "api_version": "v1",
            "ensemble": ensemble,
            "models": models,
        }

    @router.get("/v1/model-card", tags=["service"])
    async def model_card(_: Caller) -> dict[str, Any]:
        """The model card (paper 3.4; Mitchell et al.) from the manifest and the latest report.

        ``markdown`` holds the card; it says plainly when weights are untrained or figures are
        missing. If it cannot be rendered, ``status`` is ``placeholder`` and ``detail`` says why.
        """
        from evaluation.model_card import render_model_card

        info: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            info = await asyncio.wait_for(ctx.runner.describe(), timeout=5)
        base = {
            "service_version": __version__,
            "models": info.get("models"),
            "warnings": info.get("warnings", []),
        }
        report = ctx.config.model_card_report
        try:
            markdown = await asyncio.to_thread(
                render_model_card, ctx.config.analysis.inference.model_dir, report
            )
        except DfdError as exc:
            return {
                "status": "placeholder",
                "detail": f"This is a placeholder: the model card could not be rendered "
                f"({exc.detail}).",
                **base,
            }
        source = (
            f"the report in {report.name}" if report else "no evaluation report (figures missing)"
        )
        return {
            "status": "generated",
            "detail": f"Rendered from the model manifest and {source}.",
            **base,
            "markdown": markdown,
        }

    return router
