"""gcp-storage-emulator, with the one response header tensorstore needs.

Real Cloud Storage sends `x-goog-generation` with every object download;
tensorstore (orbax's array store) reads it to version the OCDBT manifest
and refuses a download without it ("Malformed StorageGeneration"). This
emulator version leaves it out, so this wrapper adds it; everything else is
the emulator unchanged. Run as the emulator's own CLI:

  python tests/gcs_emulator_server.py start --host 127.0.0.1 --port P ...
"""

import sys

from gcp_storage_emulator import server
from gcp_storage_emulator.__main__ import main
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_download = objects.download


def download_with_generation(request, response, storage, *args, **kwargs):
  try:
    obj = storage.get_file_obj(request.params["bucket_name"],
                               request.params["object_id"])
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
  except NotFound:
    pass
  return _download(request, response, storage, *args, **kwargs)


objects.download = download_with_generation  # `objects.get` calls it too.
for _pattern, methods in server.HANDLERS:
  for method, handler in list(methods.items()):
    if handler is _download:
      methods[method] = download_with_generation

if __name__ == "__main__":
  sys.exit(main())
