"""Landmark overlays drawn into BGR frames (export, MJPEG preview); the browser's twin is
web/overlay.js. The overlay names and their check live here only."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from ingest.exceptions import BadRequestError

OPEN_PATHS = [(0, 17), (17, 22), (22, 27), (27, 31), (31, 36)]
CLOSED_PATHS = [(36, 42), (42, 48), (48, 60), (60, 68)]
OVERLAYS = ("landmarks", "lips", "none")
LIP_COLOUR = (90, 20, 200)  # BGR
LIP_ALPHA = 0.4


def draw_landmarks(bgr: np.ndarray, faces: list[dict[str, Any]]) -> None:
    for face in faces:
        points = np.round(np.asarray(face["points"], dtype=np.float32)).astype(np.int32)
        for a, b in OPEN_PATHS:
            cv2.polylines(bgr, [points[a:b]], False, (160, 220, 80), 1, cv2.LINE_AA)
        for a, b in CLOSED_PATHS:
            cv2.polylines(bgr, [points[a:b]], True, (160, 220, 80), 1, cv2.LINE_AA)
        for x, y in points:
            cv2.circle(bgr, (int(x), int(y)), 2, (255, 255, 255), -1, cv2.LINE_AA)


def draw_lips(bgr: np.ndarray, faces: list[dict[str, Any]]) -> None:
    """Recolour the lips: outer lip polygon (48-59) minus the inner one (60-67), blurred,
    blended at 40%. Only a box around the mouth is touched."""
    for face in faces:
        points = np.asarray(face["points"], dtype=np.float32)
        outer, inner = points[48:60], points[60:68]
        x0, y0 = np.floor(outer.min(axis=0)).astype(int) - 12
        x1, y1 = np.ceil(outer.max(axis=0)).astype(int) + 12
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, bgr.shape[1]), min(y1, bgr.shape[0])
        if x1 <= x0 or y1 <= y0:
            continue
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        offset = np.array([x0, y0], np.float32)
        cv2.fillPoly(mask, [np.round(outer - offset).astype(np.int32)], 255, cv2.LINE_AA)
        cv2.fillPoly(mask, [np.round(inner - offset).astype(np.int32)], 0, cv2.LINE_AA)
        alpha = cv2.GaussianBlur(mask, (7, 7), 0).astype(np.float32)[..., None] * (LIP_ALPHA / 255)
        region = bgr[y0:y1, x0:x1].astype(np.float32)
        bgr[y0:y1, x0:x1] = (region * (1 - alpha) + np.array(LIP_COLOUR, np.float32) * alpha).astype(np.uint8)


def draw_names(bgr: np.ndarray, faces: list[dict[str, Any]]) -> None:
    """Each identified face's name (or "unknown") on a dark label above its box."""
    for face in faces:
        if "identity" not in face:  # not identified (empty gallery): no label
            continue
        label = face["identity"]["name"] if face["identity"] else "unknown"
        x, y, w, _ = face["box"]
        scale = max(0.4, min(1.0, w / 250))
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = max(y - th - base - 6, 0)
        cv2.rectangle(bgr, (x, top), (x + tw + 8, top + th + base + 5), (30, 30, 30), -1)  # ends above the box
        colour = (160, 220, 80) if face["identity"] else (200, 200, 200)
        cv2.putText(bgr, label, (x + 4, top + th + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def check_overlay(name: object) -> str:
    """``name`` if it is an overlay, else the one refusal every caller gives (``bad_request``)."""
    if name not in OVERLAYS:
        raise BadRequestError(f"overlay {str(name)[:40]!r} is not one of {', '.join(OVERLAYS)}")
    return str(name)


def draw(bgr: np.ndarray, faces: list[dict[str, Any]], overlay: str) -> None:
    if overlay == "landmarks":
        draw_landmarks(bgr, faces)
    elif overlay == "lips":
        draw_lips(bgr, faces)
    if overlay != "none":
        draw_names(bgr, faces)
