"""The versioned HTTP API (/api/v1): sessions, renders, edits, jobs and the vector library.

Endpoints that render go through the service's renderer (batched with every other client's); endpoints that
decode uploads or touch the disk are plain functions, which FastAPI runs in its thread pool."""
from __future__ import annotations

import asyncio
from typing import Literal, Optional, Union

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, Field

from .. import io
from ..errors import InputValueError
from . import codec, composite
from .errormap import Conflict
from .library import check_name
from .sessions import Photo, Session

PNG = "image/png"
MAX_SEED = 2 ** 31 - 1


class SeedRequest(BaseModel):
    seed: int = Field(0, ge=0, le=MAX_SEED)
    truncation: float = Field(0.7, ge=0.0, le=2.0)


class ApplyRequest(BaseModel):
    scales: dict[str, Union[float, list[float]]] = Field(
        default_factory=dict, description="{vector name: scale, or a list of scales (one row each)}")


class LearnRequest(BaseModel):
    labels_png: str = Field(..., description="the painted label map: a PNG (palette, gray or palette-coloured "
                                             "RGB) in base64, or a data URL")
    name: str
    steps: int = Field(100, ge=0)
    region: Literal["changed", "classes"] = "changed"
    classes: Optional[list[int]] = None


class RefineRequest(BaseModel):
    scales: dict[str, float]
    steps: int = Field(30, ge=0)


def _int_list(text: Optional[str], what: str) -> list[int]:
    if not text:
        return []
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise InputValueError(f"{what} takes comma-separated integers, got {text!r}") from None


def build_router(service) -> APIRouter:
    """The API's routes over `service` (a service.Service)."""
    editor, limits, sessions, library, jobs, renderer = (service.editor, service.limits, service.sessions,
                                                         service.library, service.jobs, service.renderer)
    router = APIRouter(prefix="/api/v1")

    # ------------------------------------------------------------------------------------ helpers
    def check_steps(steps: int) -> None:
        limits.check("steps", steps, "max_steps")

    def describe(session: Session) -> dict:
        photo = session.photo
        return {"id": session.id, "undo_depth": len(session.history),
                "photo": None if photo is None else {"width": photo.width, "height": photo.height,
                                                     "box": list(photo.box)}}

    async def render(session: Session, vectors: dict):
        return (await renderer.render(object(), session.latent, vectors)).result

    async def encoded(result) -> list[dict]:
        images = result.image if result.image.ndim == 4 else result.image[None]
        labels = result.labels if result.labels.ndim == 3 else result.labels[None]
        return await asyncio.to_thread(codec.frames, images, labels)

    # ------------------------------------------------------------------------------------ model and service
    @router.get("/info", summary="the served model and the server's limits")
    def info():
        g = editor.generator
        return {"resolution": g.resolution, "num_ws": g.num_ws, "style_dim": g.style_dim,
                "num_classes": editor.num_classes, "label_size": list(editor.segmenter.label_size),
                "palette": [list(c) for c in io.PALETTE[:editor.num_classes]], "class_names": service.class_names,
                "fingerprint": editor.fingerprint,
                "limits": vars(limits)}

    @router.get("/stats", summary="renderer counters (batches, frames, largest batch) and live sessions")
    def stats():
        return {"renderer": renderer.stats(), "sessions": len(sessions)}

    # ------------------------------------------------------------------------------------ sessions
    @router.post("/sessions", summary="a session from a random seed")
    def create_from_seed(body: SeedRequest):
        return describe(sessions.create(editor.sample(body.seed, truncation=body.truncation)))

    @router.post("/sessions/latent", summary="a session from an uploaded w+ latent (.npy)")
    def create_from_latent(file: UploadFile = File(...)):
        g = editor.generator
        wplus = codec.decode_latent(file.file.read(), g.num_ws, g.style_dim)
        return describe(sessions.create(editor.latent(wplus)))

    @router.post("/sessions/photo", summary="embed an uploaded photo (a job; its result names the session)")
    def create_from_photo(file: UploadFile = File(...), steps: int = Form(100, ge=0),
                          box: Optional[str] = Form(None, description="square crop 'x0,y0,side' (default: "
                                                                      "the centred square)")):
        check_steps(steps)
        data = file.file.read()
        image = codec.open_image(data, "the photo", limits.max_image_pixels).convert("RGB")
        crop = _int_list(box, "box") or None
        if crop is not None and len(crop) != 3:
            raise InputValueError(f"box is 'x0,y0,side', got {box!r}")
        photo = Photo(data, image.width, image.height, composite.square_box(image.width, image.height, crop))
        target = composite.crop_for_embedding(image, photo.box, editor.generator.resolution)

        def work(callback):
            latent = editor.embed(target, steps=steps, callback=callback)
            return {"session": describe(sessions.create(latent, photo))}
        return jobs.submit("embed", steps, work).describe()

    @router.get("/sessions/{session_id}", summary="a session's state")
    def get_session(session_id: str):
        return describe(sessions.get(session_id))

    @router.delete("/sessions/{session_id}", status_code=204)
    def delete_session(session_id: str):
        sessions.delete(session_id)
        return Response(status_code=204)

    @router.post("/sessions/{session_id}/undo", summary="restore the latent before the last refine")
    def undo(session_id: str):
        return describe(sessions.undo(session_id))

    @router.get("/sessions/{session_id}/image.png", response_class=Response, summary="the session's image")
    async def image_png(session_id: str):
        result = await render(sessions.get(session_id), {})
        return Response(await asyncio.to_thread(io.image_png, result.image), media_type=PNG)

    @router.get("/sessions/{session_id}/labels.png", response_class=Response,
                summary="the session's label map (palette PNG, pixel value = class id)")
    async def labels_png(session_id: str):
        result = await render(sessions.get(session_id), {})
        return Response(await asyncio.to_thread(io.labels_png, result.labels), media_type=PNG)

    @router.get("/sessions/{session_id}/latent.npy", response_class=Response, summary="the session's w+")
    def latent_npy(session_id: str):
        return Response(codec.npy(sessions.get(session_id).latent.wplus), media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{session_id}.npy"'})

    # ------------------------------------------------------------------------------------ edits
    @router.post("/sessions/{session_id}/apply", summary="apply {vector: scale} (a list of scales: one row "
                                                         "each) -> base64 PNG image and label map per row")
    async def apply(session_id: str, body: ApplyRequest):
        session = sessions.get(session_id)
        result = await render(session, service.edit_of(body.scales))
        return {"frames": await encoded(result)}

    @router.post("/sessions/{session_id}/result.png", response_class=Response,
                 summary="the edited image as a PNG download")
    async def result_png(session_id: str, body: ApplyRequest):
        result = await render(sessions.get(session_id), service.edit_of(body.scales, one_row=True))
        return Response(await asyncio.to_thread(io.image_png, result.image), media_type=PNG,
                        headers={"Content-Disposition": 'attachment; filename="edited.png"'})

    @router.post("/sessions/{session_id}/composite.png", response_class=Response,
                 summary="the uploaded photo at full resolution with the edit pasted into the edited region")
    async def composite_png(session_id: str, body: ApplyRequest):
        session = sessions.get(session_id)
        if session.photo is None:
            raise Conflict("this session was not made from a photo: there is nothing to paste the edit into")
        vectors = service.edit_of(body.scales, one_row=True)
        original = await render(session, {})
        edited = await render(session, vectors)

        def paste():
            classes = sorted({c for v in vectors for c in v.classes})
            region = composite.edit_region(original.labels, edited.labels, classes)
            return io.pil_png(composite.paste_back(session.photo, edited.image, region, editor.segmenter))
        return Response(await asyncio.to_thread(paste), media_type=PNG,
                        headers={"Content-Disposition": 'attachment; filename="composite.png"'})

    @router.post("/sessions/{session_id}/learn", summary="learn a vector from a painted label map (a job; the "
                                                         "vector is stored in the library under `name`)")
    def learn(session_id: str, body: LearnRequest):
        session = sessions.get(session_id)
        check_steps(body.steps)
        name = check_name(body.name)
        if name in library.names():
            raise Conflict(f"the library already has a vector named {name!r}")
        data = codec.from_b64(body.labels_png, "labels_png")
        labels = codec.decode_labels(data, editor.num_classes, tuple(editor.segmenter.label_size),
                                     limits.max_image_pixels)
        # Check the edit now (unknown classes, nothing painted...), so a bad request is a 4xx, not a failed job.
        editor.edit_objective(session.latent, labels, region=body.region, classes=body.classes)
        latent = session.latent

        def work(callback):
            vector = editor.learn_vector(latent, labels, steps=body.steps, classes=body.classes,
                                         region=body.region, name=name, callback=callback)
            library.add([vector])
            return {"vector": library.describe(vector)}
        return jobs.submit("learn", body.steps, work).describe()

    @router.post("/sessions/{session_id}/refine", summary="refine the applied edit (a job; it replaces the "
                                                          "session's latent, undo restores it)")
    def refine(session_id: str, body: RefineRequest):
        session = sessions.get(session_id)
        check_steps(body.steps)
        vectors = service.edit_of(body.scales, one_row=True)
        latent = session.latent
        editor.refinement_objective(latent, vectors)  # bad input is a 4xx here, not a failed job

        def work(callback):
            refined = editor.refine(latent, vectors, steps=body.steps, callback=callback)
            return {"session": describe(sessions.replace_latent(session_id, refined))}
        return jobs.submit("refine", body.steps, work).describe()

    # ------------------------------------------------------------------------------------ jobs
    @router.get("/jobs/{job_id}", summary="a job's state, last step and loss terms, and its events after `after`")
    def get_job(job_id: str, after: int = Query(-1, ge=-1)):
        return jobs.get(job_id).describe(after)

    @router.delete("/jobs/{job_id}", summary="cancel a job (it stops at its next step)")
    def cancel_job(job_id: str):
        return jobs.cancel(job_id).describe()

    # ------------------------------------------------------------------------------------ vector library
    @router.get("/vectors", summary="the vectors in the library")
    def list_vectors():
        return {"vectors": [library.describe(library.get(n)) for n in library.names()]}

    @router.post("/vectors", summary="upload vectors: ours (.npz, .safetensors; one or many) or EditGAN's .npy "
                                               "(give classes)")
    def upload_vector(file: UploadFile = File(...), name: Optional[str] = Form(None),
                      classes: Optional[str] = Form(None, description="comma-separated class ids (.npy)")):
        stored = library.upload(file.filename or "", file.file.read(), name=name,
                                classes=_int_list(classes, "classes"))
        return {"vectors": [library.describe(v) for v in stored]}

    @router.get("/vectors/{name}", response_class=Response, summary="download a vector (.npz)")
    def download_vector(name: str):
        return Response(library.file_bytes(name), media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{name}.npz"'})

    @router.delete("/vectors/{name}", status_code=204)
    def delete_vector(name: str):
        library.delete(name)
        return Response(status_code=204)

    return router

