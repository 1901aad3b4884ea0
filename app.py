"""attnviz web app: ``python app.py`` locally, or the Space's app file (Gradio SDK).

The HTTP API (``gradio_client``) and, when ``gradio[mcp]`` is installed, an MCP server
(``/gradio_api/mcp/sse``) expose every named endpoint with its docstring as the tool description.
"""

import os

from attnviz.ui import build_demo
from attnviz.ui.app import launch_kwargs

demo = build_demo()

if __name__ == "__main__":
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        css=demo.attnviz_css,
        **launch_kwargs(),
    )
