"""The schema and its interactive page; they need the token too (only ``/v1/health`` is public).

The page's script, style sheet and icon come from the robot itself (the Swagger UI build that the
``fastapi-swagger`` package ships), not from a CDN: a robot on a bench without internet still shows it.
"""

from __future__ import annotations

import importlib.resources

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from appliance.control.routes.common import authorize

router = APIRouter(dependencies=[Depends(authorize)], include_in_schema=False)

ASSETS = {  # what the page may load, and nothing else
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}


@router.get("/openapi.json")
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs")
async def swagger(request: Request) -> Response:
    from fastapi.openapi.docs import get_swagger_ui_html

    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title=request.app.title,
        swagger_js_url="/docs/swagger-ui-bundle.js",
        swagger_css_url="/docs/swagger-ui.css",
        swagger_favicon_url="/docs/favicon-32x32.png",
    )


@router.get("/docs/{asset}")
async def swagger_asset(asset: str) -> Response:
    media_type = ASSETS.get(asset)
    if media_type is None:
        raise HTTPException(status_code=404, detail=f"no such file: {asset}")
    data = importlib.resources.files("fastapi_swagger.resources").joinpath(asset).read_bytes()
    return Response(data, media_type=media_type, headers={"cache-control": "max-age=86400"})
