"""attnviz web app: ``python app.py`` locally, or the Space's app file (Gradio SDK)."""

import os

from attnviz.ui import build_demo

demo = build_demo()

if __name__ == "__main__":
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        ssr_mode=False,
    )
