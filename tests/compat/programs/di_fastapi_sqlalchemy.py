# ruff: noqa
# fmt: off
# Source: github.com/ets-labs/python-dependency-injector, the example application
#   examples/miniapps/fastapi-sqlalchemy/webapp/: database.py (commit
#   35f280ac8a38c7c4ef9338ad8a0a103e6f8a3115), models.py (35f280ac8a38c7c4ef9338ad8a0a103e6f8a3115),
#   repositories.py (541131e33858ee1b8b5a7590d2bb9f929740ea1e), services.py
#   (479ac188f0364186837edcc2f4249bafa8add839).  License: BSD-3-Clause, Copyright (c) 2015,
#   ETS Labs.
# The four modules are pasted in order as one file (the relative imports that joined them
# are dropped).  The FastAPI endpoints and the dependency-injection container are not
# included (they need fastapi and dependency_injector); a driver written for this suite
# calls the service and the repository the way endpoints.py does: list, get by id (and a
# missing id), create, delete.  UserService.create_user() makes a random e-mail
# (uuid4()); the driver creates users through UserRepository.add() with fixed e-mails instead.
# Changed (construction only):
#   - Database.__init__: create_engine(db_url, echo=True)  ->  compat_env.engine()  (echo=True
#     SQL logging to stdout dropped with it); orm.sessionmaker(..., bind=self._engine)  ->
#     compat_env.sessionmaker(..., bind=self._engine)
#   - import compat_env added

import compat_env  # the harness's construction (tests/compat/compat_env.py)

# ---------------------------------------------------------------- webapp/database.py
"""Database module."""

from contextlib import contextmanager, AbstractContextManager
from typing import Callable
import logging

from sqlalchemy import create_engine, orm
from sqlalchemy.ext.declarative import declarative_base
from sqlalchemy.orm import Session

logger = logging.getLogger(__name__)

Base = declarative_base()


class Database:

    def __init__(self, db_url: str) -> None:
        self._engine = compat_env.engine()
        self._session_factory = orm.scoped_session(
            compat_env.sessionmaker(
                autocommit=False,
                autoflush=False,
                bind=self._engine,
            ),
        )

    def create_database(self) -> None:
        Base.metadata.create_all(self._engine)

    @contextmanager
    def session(self) -> Callable[..., AbstractContextManager[Session]]:
        session: Session = self._session_factory()
        try:
            yield session
        except Exception:
            logger.exception('Session rollback because of exception')
            session.rollback()
            raise
        finally:
            session.close()

# ---------------------------------------------------------------- webapp/models.py
"""Models module."""

from sqlalchemy import Column, String, Boolean, Integer


class User(Base):

    __tablename__ = 'users'

    id = Column(Integer, primary_key=True)
    email = Column(String, unique=True)
    hashed_password = Column(String)
    is_active = Column(Boolean, default=True)

    def __repr__(self):
        return f'<User(id="{self.id}", ' \
               f'email="{self.email}", ' \
               f'hashed_password="{self.hashed_password}", ' \
               f'is_active="{self.is_active}")>'

# ---------------------------------------------------------------- webapp/repositories.py
"""Repositories module."""

from contextlib import AbstractContextManager
from typing import Callable, Iterator

from sqlalchemy.orm import Session


class UserRepository:

    def __init__(self, session_factory: Callable[..., AbstractContextManager[Session]]) -> None:
        self.session_factory = session_factory

    def get_all(self) -> Iterator[User]:
        with self.session_factory() as session:
            return session.query(User).all()

    def get_by_id(self, user_id: int) -> User:
        with self.session_factory() as session:
            user = session.query(User).filter(User.id == user_id).first()
            if not user:
                raise UserNotFoundError(user_id)
            return user

    def add(self, email: str, password: str, is_active: bool = True) -> User:
        with self.session_factory() as session:
            user = User(email=email, hashed_password=password, is_active=is_active)
            session.add(user)
            session.commit()
            session.refresh(user)
            return user

    def delete_by_id(self, user_id: int) -> None:
        with self.session_factory() as session:
            entity: User = session.query(User).filter(User.id == user_id).first()
            if not entity:
                raise UserNotFoundError(user_id)
            session.delete(entity)
            session.commit()


class NotFoundError(Exception):

    entity_name: str

    def __init__(self, entity_id):
        super().__init__(f"{self.entity_name} not found, id: {entity_id}")


class UserNotFoundError(NotFoundError):

    entity_name: str = "User"

# ---------------------------------------------------------------- webapp/services.py
"""Services module."""

from uuid import uuid4
from typing import Iterator


class UserService:

    def __init__(self, user_repository: UserRepository) -> None:
        self._repository: UserRepository = user_repository

    def get_users(self) -> Iterator[User]:
        return self._repository.get_all()

    def get_user_by_id(self, user_id: int) -> User:
        return self._repository.get_by_id(user_id)

    def create_user(self) -> User:
        uid = uuid4()
        return self._repository.add(email=f'{uid}@email.com', password='pwd')

    def delete_user_by_id(self, user_id: int) -> None:
        return self._repository.delete_by_id(user_id)

# ---------------------------------------------------------------- driver (this suite's)
if __name__ == '__main__':
    db = Database(db_url='sqlite:///./webapp.db')  # config.yml's db.url; replaced above
    db.create_database()
    repository = UserRepository(session_factory=db.session)
    service = UserService(user_repository=repository)

    for name in ('alice', 'bob', 'carol', 'dave'):
        print('POST /users ->', repository.add(email=f'{name}@email.com', password='pwd'))
    print(repository.add(email='erin@email.com', password='pwd', is_active=False))
    print('GET /users ->', service.get_users())
    print('GET /users/2 ->', service.get_user_by_id(2))
    try:
        service.get_user_by_id(99)
    except NotFoundError as exc:
        print('GET /users/99 -> 404:', exc)
    service.delete_user_by_id(3)
    print('DELETE /users/3 -> 204')
    try:
        service.delete_user_by_id(3)
    except NotFoundError as exc:
        print('DELETE /users/3 -> 404:', exc)
    print('GET /users ->', service.get_users())
