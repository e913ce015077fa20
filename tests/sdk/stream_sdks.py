"""Consumes the emulator's streams with the official OpenAI and DashScope Python SDKs.

Usage: python3 stream_sdks.py BASE_URL   (e.g. http://127.0.0.1:PORT)

Run by tests/emulator_sdk.rs when python3 can import `openai` and `dashscope`; exits 0 when
every check holds, else prints what failed and exits 1. The emulator's answer is
deterministic, so each stream is compared with the same call made without a stream.
"""

import sys

import dashscope
import openai
from dashscope import MultiModalConversation

BASE = sys.argv[1].rstrip("/")
KEY = "sk-sdk"
IMG = "https://example.com/cat.png"
MODERATE_OUTPUT = "[[emulator:moderate-output]]"


def check(condition, what):
    if not condition:
        print(f"FAILED: {what}")
        sys.exit(1)


def openai_streams():
    client = openai.OpenAI(api_key=KEY, base_url=f"{BASE}/compatible-mode/v1", max_retries=0)
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": IMG}},
                {"type": "text", "text": "Describe the cat."},
            ],
        }
    ]
    plain = client.chat.completions.create(model="qwen-vl-plus", messages=messages)
    stream = client.chat.completions.create(
        model="qwen-vl-plus",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, pieces = "", None, 0
    for chunk in stream:
        if chunk.choices:
            piece = chunk.choices[0].delta.content or ""
            text += piece
            pieces += bool(piece)
        if chunk.usage is not None:
            usage = chunk.usage
    check(text == plain.choices[0].message.content, f"openai: joined text {text!r}")
    check(pieces >= 3, f"openai: {pieces} pieces")
    check(usage is not None and usage.total_tokens == plain.usage.total_tokens, f"openai usage {usage}")

    # A thinking model: reasoning_content arrives as an extra field of the delta.
    reasoning = ""
    for chunk in client.chat.completions.create(
        model="qvq-max", messages=messages, stream=True, stream_options={"include_usage": True}
    ):
        if chunk.choices:
            reasoning += getattr(chunk.choices[0].delta, "reasoning_content", None) or ""
    check("Describe the cat." in reasoning, f"openai: reasoning {reasoning!r}")

    # Moderation mid-stream: the SDK raises the error it reads from the stream.
    moderated = [
        {"role": "user", "content": [{"type": "text", "text": f"Hi {MODERATE_OUTPUT}"}]}
    ]
    try:
        for _ in client.chat.completions.create(model="qwen-vl-plus", messages=moderated, stream=True):
            pass
        check(False, "openai: the moderated stream raised nothing")
    except openai.APIError as err:
        check("Output data may contain inappropriate content." in str(err), f"openai: {err}")
    print("openai: ok")


def dashscope_streams():
    dashscope.base_http_api_url = f"{BASE}/api/v1"
    messages = [{"role": "user", "content": [{"image": IMG}, {"text": "Describe the cat."}]}]
    plain = MultiModalConversation.call(api_key=KEY, model="qwen-vl-plus", messages=messages)
    check(plain.status_code == 200, f"dashscope: plain call {plain}")
    expected = plain.output.choices[0].message.content[0]["text"]
    for incremental in (True, False):
        text, last, frames = "", None, 0
        for response in MultiModalConversation.call(
            api_key=KEY,
            model="qwen-vl-plus",
            messages=messages,
            stream=True,
            incremental_output=incremental,
        ):
            check(response.status_code == 200, f"dashscope: frame {response}")
            content = response.output.choices[0].message.content
            piece = content[0]["text"] if content else ""
            text = text + piece if incremental else piece
            last, frames = response, frames + 1
        check(text == expected, f"dashscope (incremental {incremental}): {text!r}")
        check(frames >= 3, f"dashscope: {frames} frames")
        check(last.output.choices[0].finish_reason == "stop", f"dashscope: last {last}")
        check(last.usage.output_tokens == plain.usage.output_tokens, f"dashscope usage {last.usage}")

    moderated = [{"role": "user", "content": [{"text": f"Hi {MODERATE_OUTPUT}"}]}]
    codes = [
        r.code
        for r in MultiModalConversation.call(
            api_key=KEY, model="qwen-vl-plus", messages=moderated, stream=True, incremental_output=True
        )
        if r.status_code != 200
    ]
    check(codes == ["DataInspectionFailed"], f"dashscope: moderated stream gave {codes}")
    print("dashscope: ok")


openai_streams()
dashscope_streams()
