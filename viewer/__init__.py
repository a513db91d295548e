"""The Vantage app: Gradio page + per-client Viser scene behind one port (see app.py).

``backend`` is the only module that talks to ``core``; ``ui`` builds the Gradio page,
``viser_scene`` the per-client 3D view, ``proxy`` puts Viser behind Gradio's port.
"""
