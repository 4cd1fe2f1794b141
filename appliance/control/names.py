"""Face and animation names the API accepts: the ones the robot can show, so a typo is a 422, not silence.

Faces are what the face service knows (the built-in ones, a face image folder's, the avatar's) plus its
aliases (``happy`` -> ``joy``); animations are the names in ``hardware.osc.animations``, the only thing
that plays them. Each refusal lists the known names, in the same shape as FastAPI's validation errors.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException


def known_faces(faces: Any) -> list[str]:
    known = set(getattr(faces, "known", ()))
    aliases = getattr(getattr(faces, "config", None), "aliases", {}) or {}
    return sorted(known | {alias for alias, face in aliases.items() if face in known})


def known_animations(config: Any) -> list[str]:
    return sorted(config.hardware.osc.animations)


def check_names(
    ctx: Any,
    *,
    face: str | None = None,
    animation: str | None = None,
    face_loc: tuple[str, ...] = ("body", "face"),
    animation_loc: tuple[str, ...] = ("body", "animation"),
) -> None:
    """Raise a 422 naming every unknown name given and listing the known ones."""
    problems = []
    if face is not None:
        faces = ctx.appliance.faces
        resolve = getattr(faces, "resolve", None)
        if callable(resolve) and resolve(face) is None:
            known = known_faces(faces)
            problems.append((face_loc, f"unknown face {face!r}; known faces: {', '.join(known)}", known))
    if animation is not None:
        known = known_animations(ctx.config)
        if animation.strip().lower() not in known:
            problems.append(
                (
                    animation_loc,
                    f"unknown animation {animation!r}; known animations: {', '.join(known)} "
                    "(add yours under hardware.osc.animations)",
                    known,
                )
            )
    if problems:
        raise HTTPException(
            status_code=422,
            detail=[
                {"loc": list(loc), "msg": msg, "type": "unknown_name", "ctx": {"known": known}}
                for loc, msg, known in problems
            ],
        )
