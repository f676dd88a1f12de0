"""``partreid serve``: search a gallery over HTTP, with a web page (needs the ``serve`` extra).

from partreid.serve import build_worker, create_app
app = create_app(build_worker("run/last.pth", "gallery_folder"))   # a FastAPI application

Modules: ``worker`` (the search worker thread and upload decoding), ``gallery`` (loading,
caching, paging the gallery), ``routes`` (the HTTP routes), ``errors`` (JSON error answers),
``middleware`` (body size limit, nosniff), ``pages`` (the web pages from one shell), ``app``
(assembling and running the server).
"""

from .app import build_worker, create_app, serve
from .gallery import GalleryPathError, ServedGallery, load_gallery
from .worker import SearchWorker, ServeLimits, UploadError, decode_upload

__all__ = [
    "GalleryPathError",
    "SearchWorker",
    "ServeLimits",
    "ServedGallery",
    "UploadError",
    "build_worker",
    "create_app",
    "decode_upload",
    "load_gallery",
    "serve",
]
