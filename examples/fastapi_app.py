from fastapi import FastAPI

from tether import Hub, Incoming

hub = Hub()  # options: keywords or TETHER_* variables (docs/configuration.md)
app = FastAPI(lifespan=hub.lifespan)  # on shutdown: 1012 + spread retry hints
app.mount("/rt", hub.asgi())  # WebSocket at /rt/ws, POST /rt/publish, GET /rt/healthz


@app.post("/orders")
async def create_order(order: dict) -> dict:
    return {"offset": await hub.publish("orders", order)}


@hub.on("orders.create")  # what a client's send("orders.create", ...) runs, once per id
async def on_create(msg: Incoming) -> dict:
    return {"offset": await hub.publish("orders", msg.data)}  # the ack's result
