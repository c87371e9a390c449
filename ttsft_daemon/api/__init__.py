"""The daemon's local HTTP API (issue 17): status, voices, clips, reports and metrics to read; uploads and training to
ask for, with a bearer token. Starlette on uvicorn, served from a thread of the daemon (`server.ApiServer`) when
`api.enabled` is true; off by default.

Modules: `app` (routes and their OpenAPI descriptions), `views` (what the read endpoints answer, from the files
alone), `uploads` (a streamed upload into the inbox through a hidden temporary name), `auth` (the token),
`docs` (the /docs page, made from the OpenAPI description, no external assets), `server` (uvicorn in a thread).
"""
