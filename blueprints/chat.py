"""/api/chatbot: start, stop, read and list conversations."""
from __future__ import annotations

from functools import wraps
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator
from quart import Blueprint, request, url_for
from quart_schema import validate_request, validate_response

from blueprints import api_error, runtime, sse_response, user_id
from tasks.workflows import list_workflows, owned_workflow, start_round, stop_round, stream_workflow, workflow_detail

bp = Blueprint("chat", __name__, url_prefix="/api/chatbot")


class StartChat(BaseModel):
    prompt: str = Field(strict=True)
    workflowId: str | None = Field(default=None, strict=True)

    @field_validator("prompt")
    @classmethod
    def storable_text(cls, prompt: str) -> str:
        if not prompt.strip():
            raise ValueError("prompt must not be empty")
        # JSON can spell what no database stores: half a surrogate pair, or NUL (PostgreSQL).
        try:
            prompt.encode()
        except UnicodeEncodeError:
            raise ValueError("prompt must be text: it holds an unpaired surrogate") from None
        if "\x00" in prompt:
            raise ValueError("prompt must be text: it holds a NUL character")
        return prompt


class StartedChat(BaseModel):
    workflowId: str
    messageId: str
    streamUrl: str


class StopAnswer(BaseModel):
    workflowId: str
    status: str  # the workflow's when answering


class RoundError(BaseModel):
    code: str
    message: str


class WorkflowSummary(BaseModel):
    id: str
    status: Literal["running", "completed", "stopped", "failed"]
    title: str
    roundNumber: int
    createdAt: float
    updatedAt: float
    error: RoundError | None  # the latest round's, if it failed


class ChatData(BaseModel):
    """A stored message or log as the stream's ``chatdata`` events carry it (API.md)."""

    type: Literal["message", "log"]
    createdAt: float
    item: dict[str, Any]


class WorkflowDetail(BaseModel):
    workflow: WorkflowSummary
    items: list[ChatData]  # oldest first


class WorkflowList(BaseModel):
    workflows: list[WorkflowSummary]  # most recently active first


def json_object(handler):
    """415 for a body that is not JSON, 400 for bad JSON or a body that is not an object,
    before validation turns field errors into 422."""

    @wraps(handler)
    async def checked(*args, **kwargs):
        body = await request.get_data()  # read it all, so the connection stays usable
        if not request.is_json:
            return api_error(415, "unsupported_media_type", "Send the body as application/json.")
        try:
            body.decode()
        except UnicodeDecodeError:
            return api_error(400, "invalid_json", "The body is not valid UTF-8.")
        data = await request.get_json(silent=True)
        if data is None and body.strip() != b"null":
            return api_error(400, "invalid_json", "The body is not valid JSON.")
        if not isinstance(data, dict):
            return api_error(400, "invalid_body", "The body must be a JSON object.")
        return await handler(*args, **kwargs)

    return checked


@bp.post("/start")
@json_object
@validate_request(StartChat)
@validate_response(StartedChat, 202)
async def start(data: StartChat):
    workflow, message = await start_round(runtime(), user_id(), data.prompt, data.workflowId)
    stream_url = url_for("stream.stream", workflow_id=workflow.id)
    return StartedChat(workflowId=workflow.id, messageId=message.id, streamUrl=stream_url), 202


@bp.post("/start/stream")
@json_object
@validate_request(StartChat)
async def start_and_stream(data: StartChat):
    workflow, _ = await start_round(runtime(), user_id(), data.prompt, data.workflowId)
    return await sse_response(await stream_workflow(runtime(), user_id(), workflow.id, None, None))


@bp.post("/<workflow_id>/stop")
@validate_response(StopAnswer, 202)
async def stop(workflow_id: str):
    workflow = await owned_workflow(user_id(), workflow_id)
    return StopAnswer(workflowId=workflow.id, status=await stop_round(runtime(), workflow)), 202


@bp.get("/<workflow_id>")
@validate_response(WorkflowDetail)
async def detail(workflow_id: str):
    return WorkflowDetail.model_validate(await workflow_detail(await owned_workflow(user_id(), workflow_id)))


@bp.get("")
@validate_response(WorkflowList)
async def index():
    return WorkflowList(workflows=await list_workflows(user_id()))
