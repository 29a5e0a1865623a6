"""The login form, logging out, and the error page.

The form's user and password go through the site's twisted.cred portal
(:func:`farmnet.web.auth.login`); a good login starts a fresh twisted.web session.
"""

from __future__ import annotations

import urllib.parse

from twisted.cred.credentials import UsernamePassword
from twisted.web.template import tags

from farmnet.web import auth
from farmnet.web.context import WebContext
from farmnet.web.layout import Page, page_reply
from farmnet.web.routing import Call, Reply, redirect

__all__ = ["LoginPages", "safe_next"]


def safe_next(value: str | None) -> str:
    """Where to go after a login: a path on this site only."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    if len(value) > 2000 or any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "/"
    parts = urllib.parse.urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    return value


class LoginPages:
    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx

    def form(self, call: Call, next_url: str, message: str | None = None, user: str = "",
             status: int = 200) -> Reply:
        if not self.ctx.logins:
            content = tags.div(tags.h1("Log in"),
                               tags.p("Logins are off on this server: it has no password file "
                                      "(server.auth.users_file).", class_="banner off"))
        elif not auth.passwords_accepted(self.ctx.portal):
            content = tags.div(
                tags.h1("Log in"), tags.p(message, class_="error-text") if message else "",
                tags.p("This farm has no password file: open the login link the server printed "
                       "when it started (in its log, and in the file web.login of its store).",
                       class_="banner"))
        else:
            content = tags.div(
                tags.h1("Log in"),
                tags.p(message, class_="error-text") if message else "",
                tags.form(
                    tags.label("user", tags.input(name="user", value=user, autocomplete="username",
                                                  required="", autofocus="")),
                    tags.label("password", tags.input(name="password", type="password",
                                                      autocomplete="current-password", required="")),
                    tags.input(type="hidden", name="next", value=next_url),
                    tags.button("log in", type="submit", id="login-submit"),
                    method="post", action="/login", class_="login"))
        return page_reply(self.ctx, call, "Log in", content, status=status)

    async def login_page(self, call: Call) -> Reply:
        """The form; or, with ``?token=``, the server's login link."""
        next_url = safe_next(call.arg("next"))
        token = call.arg("token")
        if token is None:
            return self.form(call, next_url)
        try:
            avatar = await auth.login_with_token(self.ctx.portal, token, self.ctx.throttle,
                                                 auth.client_address(call.request))
        except auth.LoginFailed as e:
            return self.form(call, next_url, str(e), status=401)
        auth.start_session(call.request, avatar)
        return redirect(next_url)

    async def login_post(self, call: Call) -> Reply:
        form = call.form()
        user, password = form.get("user", ""), form.get("password", "")
        next_url = safe_next(form.get("next"))
        try:
            avatar = await auth.login(self.ctx.portal, UsernamePassword(user.encode(), password.encode()),
                                      self.ctx.throttle, auth.client_address(call.request))
        except auth.LoginFailed as e:
            return self.form(call, next_url, str(e), user, status=401)
        auth.start_session(call.request, avatar)
        return redirect(next_url)

    async def logout(self, call: Call) -> Reply:
        auth.end_session(call.request)
        return redirect("/")

    def error_page(self, call: Call, status: int, message: str) -> Page:
        content = tags.div(tags.h1(f"Error {status}"), tags.p(message, class_="banner off"))
        return Page(self.ctx, call, f"Error {status}", content)
