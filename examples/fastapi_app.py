from fastapi import FastAPI

from tether import Hub

hub = Hub()  # options: keywords or TETHER_* variables (docs/configuration.md)
app = FastAPI(lifespan=hub.lifespan)  # on shutdown: 1012 + spread retry hints
app.mount("/rt", hub.asgi())  # WebSocket at /rt/ws, POST /rt/publish, GET /rt/healthz


@app.post("/orders")
async def create_order(order: dict) -> dict:
    return {"offset": await hub.publish("orders", order)}
