"""Chat gateway (asyncio): open a session, append a user turn and the model's answer, read history.

    QDATA_ADDRESS=127.0.0.1:50051 QDATA_TOKEN=qdt_... python chat_gateway.py --user alice

The calling service's token needs users.read (GetUser), chat.read and chat.write.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from qdata.client import AsyncQdataClient
from qdata.v1 import chat_pb2, user_pb2

MODEL = "openai/gpt-4o-mini"


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default=os.environ.get("QDATA_ADDRESS", "127.0.0.1:50051"))
    parser.add_argument("--token", default=os.environ.get("QDATA_TOKEN"), help="default: $QDATA_TOKEN")
    parser.add_argument("--user", default="alice", help="username (default: alice of the sample data)")
    parser.add_argument("--title", default="Example: packing for Lisbon")
    return parser.parse_args()


def turn(question: str, answer: str, input_tokens: int, output_tokens: int) -> list[chat_pb2.MessageInput]:
    return [
        chat_pb2.MessageInput(role=chat_pb2.MESSAGE_ROLE_USER, content=question),
        chat_pb2.MessageInput(
            role=chat_pb2.MESSAGE_ROLE_ASSISTANT,
            content=answer,
            model_id=MODEL,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        ),
    ]


async def main() -> int:
    args = arguments()
    # One client per process, shared by every request handler: one channel multiplexes the calls.
    async with AsyncQdataClient(args.address, token=args.token) as qdata:
        user = await qdata.users.GetUser(user_pb2.GetUserRequest(username=args.user))
        user_id = user.user.id
        session = (
            await qdata.chat.CreateSession(
                chat_pb2.CreateSessionRequest(user_id=user_id, model_id=MODEL, title=args.title, tags=["example"])
            )
        ).session
        print(f"session {session.id} for {args.user}")

        # Each turn is one AppendMessages: the question and the answer are stored together or not
        # at all, numbered after the session's last message.
        for question, answer, tokens_in, tokens_out in (
            ("What should I pack for Lisbon in May?", "Light layers, a rain jacket, walking shoes.", 14, 11),
            ("And for the evenings?", "A light sweater: evenings by the river are cool.", 40, 12),
        ):
            appended = await qdata.chat.AppendMessages(
                chat_pb2.AppendMessagesRequest(
                    user_id=user_id, session_id=session.id, messages=turn(question, answer, tokens_in, tokens_out)
                )
            )
            numbers = [m.sequence_number for m in appended.messages]
            print(f"appended messages {numbers}; session has {appended.session.message_count}")

        # History for the model's context: the last 10 messages are one call (newest first).
        recent = await qdata.chat.ListMessages(
            chat_pb2.ListMessagesRequest(
                user_id=user_id, session_id=session.id, order=chat_pb2.MESSAGE_ORDER_DESCENDING, page_size=10
            )
        )
        print("history:")
        for message in reversed(recent.messages):
            role = chat_pb2.MessageRole.Name(message.role).removeprefix("MESSAGE_ROLE_").lower()
            print(f"  {message.sequence_number} {role}: {message.content}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
