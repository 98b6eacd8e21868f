"""gcp-storage-emulator, with the one response header tensorstore needs and
the create-only precondition real Cloud Storage honours.

Real Cloud Storage sends `x-goog-generation` with every object download;
tensorstore (orbax's array store) reads it to version the OCDBT manifest
and refuses a download without it ("Malformed StorageGeneration"). This
emulator version leaves it out, so this wrapper adds it; everything else is
the emulator unchanged.

Real Cloud Storage also refuses an upload with `ifGenerationMatch=0` (a
create-only write: gcsfs `pipe_file(..., mode="create")`, which the
workdir lock uses) when the object exists, with 412 Precondition Failed;
this emulator version ignores the parameter and overwrites, so this
wrapper checks it (the emulator serves one request at a time, so the check
and the write are one step). Other generation numbers are passed through
unchecked, as before.

And it answers the objects.move call (`.../o/NAME/moveTo/o/NEW`, which
gcsfs tries first for every rename) as real Cloud Storage does; this
emulator version answers 501, which gcsfs retries for about 35 s before
falling back to copy and delete, per object.

Run as the emulator's own CLI:

  python tests/gcs_emulator_server.py start --host 127.0.0.1 --port P ...
"""

import sys

from gcp_storage_emulator import server, settings
from gcp_storage_emulator.__main__ import main
from http import HTTPStatus

from gcp_storage_emulator.exceptions import Conflict, NotFound
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


_insert, _upload_partial = objects.insert, objects.upload_partial


def _upload_name(request, storage):
  """The object an upload request writes (None if it cannot tell)."""
  query = request.query
  if "upload_id" in query:  # A chunk of a resumable upload.
    try:
      return storage.get_resumable_file_obj(query["upload_id"][0])["name"]
    except (NotFound, KeyError):
      return None
  if "name" in query:
    return query["name"][0]
  data = request.data
  if isinstance(data, dict):
    meta = data.get("meta", data)
    return meta.get("name") if isinstance(meta, dict) else None
  return None


def _create_only_refused(request, response, storage) -> bool:
  """412 for an ifGenerationMatch=0 upload of an object that exists."""
  if request.query.get("ifGenerationMatch") != ["0"]:
    return False
  name = _upload_name(request, storage)
  if name is None:
    return False
  try:
    storage.get_file_obj(request.params["bucket_name"], name)
  except NotFound:
    return False
  response.status = HTTPStatus.PRECONDITION_FAILED
  response.json({"error": {"code": 412, "message": "At least one of the "
                           "pre-conditions you specified did not hold.",
                           "errors": [{"reason": "conditionNotMet"}]}})
  return True


def insert_create_only(request, response, storage, *args, **kwargs):
  if _create_only_refused(request, response, storage):
    return None
  return _insert(request, response, storage, *args, **kwargs)


def upload_partial_create_only(request, response, storage, *args, **kwargs):
  if _create_only_refused(request, response, storage):
    return None
  return _upload_partial(request, response, storage, *args, **kwargs)


objects.download = download_with_generation  # `objects.get` calls it too.
objects.insert = insert_create_only
objects.upload_partial = upload_partial_create_only
_REPLACED = {_download: download_with_generation, _insert: insert_create_only,
             _upload_partial: upload_partial_create_only}
for _pattern, methods in server.HANDLERS:
  for method, handler in list(methods.items()):
    if handler in _REPLACED:
      methods[method] = _REPLACED[handler]

def move(request, response, storage, *args, **kwargs):
  """objects.move within a bucket: the object under its new name, the old
  name gone (one request, as real Cloud Storage)."""
  bucket = request.params["bucket_name"]
  try:
    # pylint: disable-next=protected-access
    obj = objects._copy(request.base_url, storage, bucket,
                        request.params["object_id"], bucket,
                        request.params["dest_object_id"])
    storage.delete_file(bucket, request.params["object_id"])
  except NotFound:
    response.status = HTTPStatus.NOT_FOUND
    return
  except Conflict as err:
    objects._handle_conflict(response, err)  # pylint: disable=protected-access
    return
  response.json(obj)


server.HANDLERS = tuple(
    (rf"^{prefix}/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)/moveTo/o/"
     rf"(?P<dest_object_id>.*[^/]+)$", {server.POST: move})
    for prefix in (settings.API_ENDPOINT, "")) + tuple(server.HANDLERS)

if __name__ == "__main__":
  sys.exit(main())
