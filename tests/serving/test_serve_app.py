"""The served application end to end over HTTP on loopback: every endpoint, bad input,
auth, dynamic batching with bad neighbours, cancelled clients, live retuning, and an alias
move picked up under load. One app (session fixture ``serve_url``) serves all tests here."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from serve_testlib import AUTH, CLASS_NAMES, CLASSIFIER, DETECTOR, deploy, encode, set_champion

PNG = {**AUTH, "content-type": "image/png"}


def classify(url: str, data: bytes, headers=PNG, **params) -> requests.Response:
    return requests.post(f"{url}/v1/classify", data=data, headers=headers, params=params, timeout=60)


def assert_error(response: requests.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    return body


def test_classify_raw_bodies_and_multipart(serve_url, registered, sample_image):
    answers = []
    for fmt, ctype, kwargs in (("PNG", "image/png", {}), ("JPEG", "image/jpeg", {"quality": 95}),
                               ("WEBP", "image/webp", {"lossless": True})):
        r = classify(serve_url, encode(sample_image, fmt, **kwargs),
                     headers={**AUTH, "content-type": ctype}, top_k=2)
        assert r.status_code == 200, r.text
        answers.append(r.json())
    r = requests.post(f"{serve_url}/v1/classify", headers=AUTH, timeout=60,
                      files={"image": ("x.png", encode(sample_image), "image/png")})
    assert r.status_code == 200, r.text
    answers.append(r.json())
    for body in answers:
        assert body["model"] == {"name": CLASSIFIER, "version": registered["classifier_v1"]}
        assert body["image"] == {"height": 80, "width": 120}
        preds = body["predictions"]
        assert len(preds) in (2, 3)
        assert all(p["label"] == CLASS_NAMES[p["class_id"]] for p in preds)
        assert preds[0]["score"] >= preds[-1]["score"] and 0 < sum(p["score"] for p in preds) <= 1.0001
    full = classify(serve_url, encode(sample_image)).json()["predictions"]
    assert len(full) == 3 and abs(sum(p["score"] for p in full) - 1) < 1e-3
    # lossless formats decode to the same pixels: the same answer (up to bf16 batching noise)
    for other in (answers[2], answers[3]):
        for a, b in zip(answers[0]["predictions"], other["predictions"]):
            assert a["class_id"] == b["class_id"] and abs(a["score"] - b["score"]) < 0.02


def test_detect_returns_boxes_in_original_pixels(serve_url, registered, sample_image):
    r = requests.post(f"{serve_url}/v1/detect", data=encode(sample_image), headers=PNG, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == {"name": DETECTOR, "version": registered["detector_v1"]}
    dets = body["detections"]
    assert dets, "a random detector at score_threshold 0 still returns its queries"
    for det in dets:
        x1, y1, x2, y2 = det["box"]
        assert 0 <= x1 <= x2 <= 120 and 0 <= y1 <= y2 <= 80
        assert det["label"] == CLASS_NAMES[det["class_id"]] and 0 <= det["score"] <= 1
    high = requests.post(f"{serve_url}/v1/detect", data=encode(sample_image), headers=PNG,
                         params={"score_threshold": 0.99}, timeout=60).json()["detections"]
    assert len(high) < len(dets)


def test_attention_maps_as_base64_png(serve_url, sample_image):
    import base64
    import io

    from PIL import Image

    for route in ("classify", "detect"):
        r = requests.post(f"{serve_url}/v1/{route}", data=encode(sample_image), headers=PNG,
                          params={"attention": 1}, timeout=60)
        assert r.status_code == 200, r.text
        png = Image.open(io.BytesIO(base64.b64decode(r.json()["attention_png"])))
        assert png.format == "PNG" and png.size[0] >= 256 and png.mode == "RGB"
    plain = classify(serve_url, encode(sample_image)).json()
    assert "attention_png" not in plain


def test_models_health_and_v2_metadata(serve_url, registered):
    models = requests.get(f"{serve_url}/v1/models", headers=AUTH, timeout=30).json()["models"]
    cls, det = models["classifier"], models["detector"]
    assert (cls["name"], cls["alias"], cls["class_names"], cls["image_size"], cls["patch_size"]) == (
        CLASSIFIER, "champion", CLASS_NAMES, 64, 16)
    assert cls["version"] == registered["classifier_v1"] and det["task"] == "detection"
    health = requests.get(f"{serve_url}/healthz", timeout=30)
    assert health.status_code == 200
    assert {m["status"] for m in health.json()["models"].values()} == {"ok"}
    assert requests.get(f"{serve_url}/v2/health/live", timeout=30).status_code == 200
    assert requests.get(f"{serve_url}/v2/health/ready", timeout=30).status_code == 200
    meta = requests.get(f"{serve_url}/v2/models/{CLASSIFIER}", headers=AUTH, timeout=30).json()
    assert meta["name"] == CLASSIFIER and meta["versions"] == [registered["classifier_v1"]]
    assert {t["name"] for t in meta["inputs"]} == {"image", "patches"}
    ready = requests.get(f"{serve_url}/v2/models/detector/ready", headers=AUTH, timeout=30)
    assert ready.status_code == 200 and ready.json()["name"] == DETECTOR
    assert_error(requests.get(f"{serve_url}/v2/models/nope", headers=AUTH, timeout=30), 404)
    assert_error(requests.get(f"{serve_url}/v2/models/{CLASSIFIER}/versions/999", headers=AUTH,
                              timeout=30), 404)


def test_v2_infer_with_tritonclient(serve_url, registered, sample_image):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=serve_url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(CLASSIFIER, headers=dict(AUTH))
    images = np.stack([sample_image, sample_image[::-1].copy()])
    image_input = httpclient.InferInput("image", list(images.shape), "UINT8")
    image_input.set_data_from_numpy(images)  # binary tensor extension (the client's default)
    result = client.infer(CLASSIFIER, [image_input], headers=dict(AUTH))
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (2, 3) and np.allclose(probabilities.sum(1), 1, atol=1e-3)
    assert result.get_response()["model_version"] == registered["classifier_v1"]
    # the same image through /v1 gives the same scores
    v1 = classify(serve_url, encode(sample_image)).json()["predictions"]
    for pred in v1:
        assert abs(probabilities[0, pred["class_id"]] - pred["score"]) < 0.02
    # detection, JSON tensor data, with named outputs requested
    json_input = httpclient.InferInput("image", [1, 80, 120, 3], "UINT8")
    json_input.set_data_from_numpy(sample_image[None], binary_data=False)
    outputs = [httpclient.InferRequestedOutput("boxes", binary_data=False),
               httpclient.InferRequestedOutput("num_detections", binary_data=False)]
    det = client.infer("detector", [json_input], outputs=outputs, headers=dict(AUTH))
    count = int(det.as_numpy("num_detections")[0])
    boxes = det.as_numpy("boxes")[0, :count]
    assert count > 0 and (boxes[:, 2] <= 120).all() and (boxes[:, 3] <= 80).all()
    client.close()


BAD_CASES = {
    "empty body": (b"", "image/png", 400),
    "non-image bytes": (b"definitely not an image", "image/jpeg", 400),
    "wrong content type": (b"{}", "application/json", 415),
    "no content type": (b"abc", None, 415),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_requests_are_4xx_json(serve_url, case):
    data, ctype, status = BAD_CASES[case]
    headers = {**AUTH, **({"content-type": ctype} if ctype else {})}
    if ctype is None:
        headers["content-type"] = ""
    assert_error(classify(serve_url, data, headers=headers), status)


def test_truncated_oversized_and_malformed_v2(serve_url, sample_image):
    png = encode(sample_image)
    assert_error(classify(serve_url, png[: len(png) // 2]), 400)
    # over the byte limit (300 kB): random pixels do not compress
    noise = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    assert_error(classify(serve_url, encode(noise)), 413)
    # over the pixel limit (1 MP) yet small in bytes
    assert_error(classify(serve_url, encode(np.zeros((1100, 1000, 3), np.uint8))), 413)
    v2 = f"{serve_url}/v2/models/{CLASSIFIER}/infer"
    json_bombs = (b"[" * 100_000 + b"]" * 100_000, b'{"inputs": [' + b"7" * 5000 + b"]}")
    for body in (b"{not json", b'{"inputs": [{"name": "image"}]}', b'{"inputs": 3}', *json_bombs):
        assert_error(requests.post(v2, data=body, headers=AUTH, timeout=30), 400)
    assert_error(requests.post(f"{serve_url}/v1/classify", data=png, headers=PNG,
                               params={"top_k": "many"}, timeout=30), 400)
    for threshold in ("nan", "1.5", "-0.1"):  # NaN once gave an empty answer, not an error
        assert_error(requests.post(f"{serve_url}/v1/detect", data=png, headers=PNG,
                                   params={"score_threshold": threshold}, timeout=30), 400)
    # after all that the server still answers
    assert classify(serve_url, png).status_code == 200


def test_bearer_token_auth(serve_url, sample_image):
    png = encode(sample_image)
    assert_error(classify(serve_url, png, headers={"content-type": "image/png"}), 401)
    wrong = {"content-type": "image/png", "Authorization": "Bearer nope"}
    assert_error(classify(serve_url, png, headers=wrong), 401)
    assert_error(requests.get(f"{serve_url}/v1/models", timeout=30), 401)
    assert classify(serve_url, png).status_code == 200


def test_bad_images_in_a_dynamic_batch_fail_alone(serve_url, sample_image):
    good, bad = encode(sample_image), b"\x89PNG\r\n\x1a\n broken"
    bodies = [bad if i % 4 == 0 else good for i in range(24)]
    with ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(lambda body: classify(serve_url, body).status_code, bodies))
    assert statuses == [400 if i % 4 == 0 else 200 for i in range(24)]


def test_cancelled_burst_then_normal_requests_succeed(serve_url, sample_image):
    import httpx

    png = encode(sample_image)

    async def burst():
        async with httpx.AsyncClient(timeout=60) as client:
            tasks = [asyncio.create_task(client.post(f"{serve_url}/v1/classify", content=png,
                                                     headers=PNG)) for _ in range(40)]
            await asyncio.sleep(0.02)
            for task in tasks:
                task.cancel()
            done = await asyncio.gather(*tasks, return_exceptions=True)
            return sum(isinstance(d, asyncio.CancelledError) for d in done)
        # the client's connections are closed here, mid-request

    async def timeouts():
        async with httpx.AsyncClient(timeout=0.005) as client:
            results = await asyncio.gather(*[
                client.post(f"{serve_url}/v1/classify", content=png, headers=PNG)
                for _ in range(20)], return_exceptions=True)
            return sum(isinstance(r, httpx.TimeoutException) for r in results)

    assert asyncio.run(burst()) > 0
    asyncio.run(timeouts())
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: classify(serve_url, png).status_code, range(32)))
    assert statuses == [200] * 32
    assert requests.get(f"{serve_url}/healthz", timeout=30).status_code == 200


def test_concurrent_callers_share_dynamic_batches(serve_url):
    """16 closed-loop callers: every answer arrives, and the model runs them in shared
    batches no larger than ``max_batch_size`` (not one forward pass per request)."""
    from ray import serve

    handle = serve.get_deployment_handle("classifier", app_name="vitpipe")
    before = handle.describe.remote().result()
    limit = before["settings"]["max_batch_size"]
    side = before["image_size"]
    patch = before["patch_size"]
    patches = np.zeros(((side // patch) ** 2, patch * patch * 3), np.uint8)

    def caller(_: int) -> int:
        done = 0
        for _ in range(6):
            result = handle.infer.remote(patches, side, patch, (side, side)).result(timeout_s=60)
            done += len(result["probabilities"]) == len(CLASS_NAMES)
        return done

    with ThreadPoolExecutor(16) as pool:
        assert sum(pool.map(caller, range(16))) == 96
    after = handle.describe.remote().result()
    batches = after["batches"]["count"] - before["batches"]["count"]
    requests_run = after["batches"]["requests"] - before["batches"]["requests"]
    assert requests_run == 96
    assert requests_run / batches >= 2.0, f"{batches} batches for {requests_run} requests"
    assert batches >= 96 / limit


def test_live_retune_through_user_config(serve_url, registered, model_cache, sample_image):
    from ray import serve

    handle = serve.get_deployment_handle("classifier", app_name="vitpipe")
    before = handle.describe.remote().result()
    assert before["settings"]["max_batch_size"] == 8
    # what `serve deploy` of an edited user_config does: reconfigure in place, no restart
    deploy(registered, model_cache, max_batch_size=4, batch_wait_timeout_s=0.02)
    deadline = time.monotonic() + 60
    while (after := handle.describe.remote().result())["settings"]["max_batch_size"] != 4:
        assert time.monotonic() < deadline, "the new user_config never reached the replica"
        time.sleep(0.2)
    assert after["settings"]["max_batch_size"] == 4
    assert after["settings"]["batch_wait_timeout_s"] == 0.02
    assert after["loaded_at"] == before["loaded_at"], "retuning must not reload the model"
    assert classify(serve_url, encode(sample_image)).status_code == 200


def test_a_broken_update_keeps_the_served_version(serve_url, registered, model_cache, sample_image):
    """A URI that cannot be resolved (alias missing) is reported, and serving goes on."""
    from ray import serve

    handle = serve.get_deployment_handle("classifier", app_name="vitpipe")
    served = handle.describe.remote().result()["version"]
    deploy(registered, model_cache, model_uri_override=f"models:/{CLASSIFIER}@no-such-alias")
    deadline = time.monotonic() + 60
    while not (info := handle.describe.remote().result())["last_poll_error"]:
        assert time.monotonic() < deadline, "the failed update was never reported"
        time.sleep(0.2)
    assert "no-such-alias" in info["last_poll_error"] and info["version"] == served
    r = classify(serve_url, encode(sample_image))
    assert r.status_code == 200 and r.json()["model"]["version"] == served
    deploy(registered, model_cache)  # back to @champion
    while handle.describe.remote().result()["last_poll_error"]:
        assert time.monotonic() < deadline + 60
        time.sleep(0.2)


def test_alias_move_under_load_drops_nothing(serve_url, registered, model_cache, sample_image):
    png = encode(sample_image)
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def loop():
        deadline = time.monotonic() + 60  # bounded even if the move were never seen
        with requests.Session() as session:
            while not stop.is_set() and time.monotonic() < deadline:
                r = session.post(f"{serve_url}/v1/classify", data=png, headers=PNG, timeout=30)
                seen.append((r.status_code, r.json().get("model", {}).get("version", "?")))

    threads = [threading.Thread(target=loop) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        set_champion(registered["tracking_uri"], CLASSIFIER, registered["classifier_v2"])
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            models = requests.get(f"{serve_url}/v1/models", headers=AUTH, timeout=30).json()
            if models["models"]["classifier"]["version"] == registered["classifier_v2"]:
                break
            time.sleep(0.25)
        time.sleep(1.0)  # keep the load on after the swap
    finally:
        stop.set()
        for t in threads:
            t.join()
    statuses = [s for s, _ in seen]
    versions = [v for _, v in seen]
    assert statuses and set(statuses) == {200}, f"{len(statuses)} requests, failures: " + str(
        [s for s in statuses if s != 200][:5])
    assert versions[0] == registered["classifier_v1"] and versions[-1] == registered["classifier_v2"]
    assert set(versions) == {registered["classifier_v1"], registered["classifier_v2"]}
    final = requests.get(f"{serve_url}/v1/models", headers=AUTH, timeout=30).json()
    assert final["models"]["classifier"]["version"] == registered["classifier_v2"]
    assert final["models"]["classifier"]["swaps"] >= 1
    # both versions sit in the local cache, keyed by version (a restart downloads nothing)
    for key in ("classifier_v1", "classifier_v2"):
        assert (model_cache / CLASSIFIER / registered[key] / "model.safetensors").is_file()
