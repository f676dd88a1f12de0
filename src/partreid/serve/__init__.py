"""``partreid serve``: search a gallery over HTTP, with a web page (needs the ``serve`` extra).

from partreid.serve import build_engine, create_app
app = create_app(build_engine("run/last.pth", "gallery_folder"))   # a FastAPI application
"""

from .app import build_engine, create_app, serve
from .gallery import GalleryPathError, ServedGallery, load_gallery
from .worker import SearchEngine, ServeLimits, UploadError, decode_upload

__all__ = [
    "GalleryPathError",
    "SearchEngine",
    "ServeLimits",
    "ServedGallery",
    "UploadError",
    "build_engine",
    "create_app",
    "decode_upload",
    "load_gallery",
    "serve",
]
