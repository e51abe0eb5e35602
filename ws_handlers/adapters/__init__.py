"""The adapters: the ports' I/O, one module per outside system (python-websockets' shape).

`dynamodb` and `sqlite` implement `store.Store`, `apigateway` the push port (`push.Pusher`),
`openai_model` the model port (`model.ChatModel`), `sqs` the job queue (`jobs.JobQueue`).
Only the entry points' composition root (`runtime`), the local stack and the operator's CLI
import them; the core never does (tests/ws_handlers/test_layers.py). Kept free of imports, so
that importing one adapter loads only its own library (the SQLite store loads no boto3).
"""
