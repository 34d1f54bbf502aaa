"""How a service's module-level routes reach what it set up on start (libs/runtime.py: Contexts): by
service name, from the app serving the request; one app may serve several services, and several
stacks may share a process, each seeing its own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import httpx
from fastapi import APIRouter, Depends

from libs.runtime import Runtime, ServiceParts, ServiceSpec, Stack, context_dependency
from libs.settings import Settings


@dataclass(frozen=True)
class Greeting:
    text: str


first, second = APIRouter(), APIRouter()


@first.get("/first")
async def read_first(ctx: Annotated[Greeting, Depends(context_dependency("first", Greeting))]) -> dict[str, str]:
    return {"text": ctx.text}


@second.get("/second")
async def read_second(ctx: Annotated[Greeting, Depends(context_dependency("second", Greeting))]) -> dict[str, str]:
    return {"text": ctx.text}


def spec(name: str, router: APIRouter, text: str, started: bool = True) -> ServiceSpec:
    def build(runtime: Runtime) -> ServiceParts:
        async def start() -> None:
            if started:
                runtime.contexts.set(name, Greeting(text))

        return ServiceParts(routers=[router], on_start=[start])

    return ServiceSpec(name=name, port=0, needs=frozenset(), build=build)


async def get(stack: Stack, path: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=stack.app()), base_url="http://svc") as http:
        return await http.get(path)


async def test_each_service_in_one_app_reads_its_own_context() -> None:
    async with Stack(Settings(), [spec("first", first, "one"), spec("second", second, "two")]) as stack:
        assert (await get(stack, "/first")).json() == {"text": "one"}
        assert (await get(stack, "/second")).json() == {"text": "two"}


async def test_two_stacks_in_one_process_keep_their_own_contexts() -> None:
    async with Stack(Settings(), [spec("first", first, "a")]) as a, Stack(Settings(), [spec("first", first, "b")]) as b:
        assert (await get(a, "/first")).json() == {"text": "a"}
        assert (await get(b, "/first")).json() == {"text": "b"}


async def test_a_request_to_a_service_not_started_is_told_to_retry() -> None:
    async with Stack(Settings(), [spec("first", first, "never", started=False)]) as stack:
        r = await get(stack, "/first")
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        assert "still starting" in r.text


async def test_a_router_mounted_in_an_app_of_ones_own_still_reads_its_context() -> None:
    from fastapi import FastAPI

    async with Stack(Settings(), [spec("first", first, "mine")]) as stack:
        plain = FastAPI()
        for router in stack.parts["first"].routers:
            plain.include_router(router)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=plain), base_url="http://own") as http:
            assert (await http.get("/first")).json() == {"text": "mine"}
