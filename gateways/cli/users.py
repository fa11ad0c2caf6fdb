"""`leadlog users …`: people who sign in to the web app (the first user of a workspace)."""

from __future__ import annotations

import getpass
import sys
from typing import Annotated
from uuid import UUID

import typer
from rich.markup import escape

from domain.users import InvalidUser, check_password
from domain.workspaces import Role
from gateways.bootstrap import Engine
from gateways.cli.common import JsonFlag, emit, fail, new_app, verb, with_engine
from gateways.web.passwords import Argon2Hasher
from handlers import users as commands
from handlers.workspaces import WorkspaceNotFound

users_app = new_app("Create web app users and set their passwords.")

PasswordStdin = Annotated[
    bool,
    typer.Option(
        "--password-stdin",
        help="read the password from the first line of standard input (for scripts)",
    ),
]


def read_password(from_stdin: bool) -> str:
    """The new password: stdin's first line, or typed twice at a hidden prompt; at least
    10 characters either way."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password (again): ") != password:
            raise fail("the two passwords differ")
    else:
        raise fail(
            "give --password-stdin (and the password on standard input), or run in a terminal"
        )
    try:
        return check_password(password)
    except InvalidUser as error:
        raise fail(str(error)) from None


@verb(users_app, "create")
def users_create(
    workspace: Annotated[UUID, typer.Option(help="the workspace id")],
    email: Annotated[str, typer.Option(help="the user's email (unique in the workspace)")],
    name: Annotated[str, typer.Option(help="the user's name")],
    role: Annotated[Role, typer.Option(help="the user's role")] = Role.MANAGER,
    password_stdin: PasswordStdin = False,
    as_json: JsonFlag = False,
) -> None:
    """Create a user who can sign in to the web app, with a role and a password.

    The password is read from standard input with --password-stdin, else asked twice at a
    hidden prompt; it needs at least 10 characters and only its argon2id hash is kept. An
    email that a user of the workspace already has is refused: use `leadlog users
    set-password` to give that user a new password."""
    if role is Role.PARTNER:
        raise fail("a user cannot have the partner role (partners use partner tokens)")
    password = read_password(password_stdin)
    try:
        user, position = with_engine(
            lambda e: commands.create_user(
                e.store, workspace, name, email, "operator", role, password, Argon2Hasher()
            )
        )
    except (WorkspaceNotFound, InvalidUser) as error:
        raise fail(str(error)) from None
    except commands.Taken as error:
        raise fail(f"{error}; use `leadlog users set-password` to change its password") from None
    emit(
        {
            "id": str(user.id),
            "workspaceId": str(workspace),
            "email": user.email,
            "name": user.name,
            "role": user.role,
            "position": position,
        },
        as_json,
        f"created user {user.id} {escape(user.email)} ({user.role}) in workspace {workspace}",
    )


@verb(users_app, "set-password")
def users_set_password(
    workspace: Annotated[UUID, typer.Option(help="the workspace id")],
    email: Annotated[str, typer.Option(help="the user's email")],
    password_stdin: PasswordStdin = False,
) -> None:
    """Give an existing user a new password (read as `users create` reads it)."""
    password = read_password(password_stdin)

    async def set_it(e: Engine) -> UUID:
        user = await commands.find_by_email(e.store, workspace, email)
        if user is None:
            raise commands.UserNotFound(f"no user of workspace {workspace} has email {email}")
        await commands.set_password(
            e.store, Argon2Hasher(), workspace, user.id, password, "operator"
        )
        return user.id

    try:
        user_id = with_engine(set_it)
    except (commands.UserNotFound, InvalidUser) as error:
        raise fail(str(error)) from None
    typer.echo(f"set the password of user {user_id}")


def register(app: typer.Typer) -> None:
    app.add_typer(users_app, name="users")
