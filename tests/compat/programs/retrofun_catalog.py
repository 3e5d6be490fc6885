# ruff: noqa
# fmt: off
# Source: github.com/miguelgrinberg/retrofun (code of the book "SQLAlchemy 2 In Practice"),
#   chapter3/db.py, chapter3/models.py, chapter3/import_products.py and chapter3/products.csv
#   (as programs/data/retrofun_catalog/products.csv), at commit
#   0dcf64de7db91b938db1392e9ca7992edd530bcd.  License: MIT, Copyright (c) 2023 Miguel Grinberg.
# The application's three modules are pasted in order as one file (the "from db import ..." /
# "from models import ..." lines that joined them are dropped), then a driver, written for
# this suite, runs the import script and queries the catalog the way the book's chapter does
# (joins, grouping, aggregates, pagination, an update and a cascading delete), printing names
# and values only (never the autoincrement ids).
# Changed (construction only):
#   - db.py: load_dotenv() and its import dropped (python-dotenv only loads DATABASE_URL);
#     engine = create_engine(os.environ['DATABASE_URL'])  ->  engine = compat_env.engine()
#     Session = sessionmaker(engine)  ->  Session = compat_env.sessionmaker(engine)
#   - models.py: __shard_key__ = 'name' added to Manufacturer: each manufacturer, and its
#     products (which follow it through Manufacturer.products), is placed by a hash of the
#     manufacturer's name, so the 76 manufacturers spread over the four shards
#   - import compat_env added

import compat_env  # the harness's construction (tests/compat/compat_env.py)

# ---------------------------------------------------------------- chapter3/db.py
import os
from sqlalchemy import create_engine, MetaData
from sqlalchemy.orm import DeclarativeBase, sessionmaker


class Model(DeclarativeBase):
    metadata = MetaData(naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    })


engine = compat_env.engine()
Session = compat_env.sessionmaker(engine)

# ---------------------------------------------------------------- chapter3/models.py
from typing import Optional
from sqlalchemy import String, ForeignKey
from sqlalchemy.orm import Mapped, mapped_column, relationship


class Product(Model):
    __tablename__ = 'products'

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True, unique=True)
    manufacturer_id: Mapped[int] = mapped_column(
        ForeignKey('manufacturers.id'), index=True)
    year: Mapped[int] = mapped_column(index=True)
    country: Mapped[Optional[str]] = mapped_column(String(32))
    cpu: Mapped[Optional[str]] = mapped_column(String(32))

    manufacturer: Mapped['Manufacturer'] = relationship(
        back_populates='products')

    def __repr__(self):
        return f'Product({self.id}, "{self.name}")'


class Manufacturer(Model):
    __tablename__ = 'manufacturers'
    __shard_key__ = 'name'

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True, unique=True)

    products: Mapped[list['Product']] = relationship(
        cascade='all, delete-orphan', back_populates='manufacturer')

    def __repr__(self):
        return f'Manufacturer({self.id}, "{self.name}")'

# ---------------------------------------------------------------- chapter3/import_products.py
import csv


def main():
    Model.metadata.drop_all(engine)  # warning: this deletes all data!
    Model.metadata.create_all(engine)

    with Session() as session:
        with session.begin():
            with open('products.csv') as f:
                reader = csv.DictReader(f)
                all_manufacturers = {}

                for row in reader:
                    row['year'] = int(row['year'])

                    manufacturer = row.pop('manufacturer')
                    p = Product(**row)

                    if manufacturer not in all_manufacturers:
                        m = Manufacturer(name=manufacturer)
                        session.add(m)
                        all_manufacturers[manufacturer] = m
                    all_manufacturers[manufacturer].products.append(p)


# ---------------------------------------------------------------- driver (this suite's)
from sqlalchemy import delete, func, select, update


def report():
    with Session() as session:
        print('products:', session.scalar(select(func.count(Product.id))))
        print('manufacturers:', session.scalar(select(func.count(Manufacturer.id))))
        print('years:', session.execute(
            select(func.min(Product.year), func.max(Product.year))).one())
        print('average year: %.3f' % session.scalar(select(func.avg(Product.year))))

        # one manufacturer's products (the shard key pins the query to one shard)
        q = (select(Product.name, Product.year, Product.cpu)
             .join(Product.manufacturer)
             .where(Manufacturer.name == 'Commodore')
             .order_by(Product.year, Product.name))
        for row in session.execute(q):
            print('  Commodore:', tuple(row))

        # the manufacturer of a product, through the relationship
        p = session.scalar(select(Product).where(Product.name == 'ZX Spectrum'))
        print('ZX Spectrum is made by', p.manufacturer.name,
              'with', len(p.manufacturer.products), 'products')

        # manufacturers with the most products
        count = func.count(Product.id).label('count')
        q = (select(Manufacturer.name, count)
             .join(Manufacturer.products)
             .group_by(Manufacturer.name)
             .order_by(count.desc(), Manufacturer.name)
             .limit(6))
        print('top manufacturers:', [tuple(r) for r in session.execute(q)])

        # products per year, over all manufacturers
        q = (select(Product.year, func.count(Product.id))
             .group_by(Product.year)
             .having(func.count(Product.id) >= 8)
             .order_by(Product.year))
        print('busy years:', [tuple(r) for r in session.execute(q)])

        # countries and CPUs
        q = (select(Product.country, func.count(Product.id), func.min(Product.year))
             .where(Product.country.is_not(None))
             .group_by(Product.country)
             .order_by(Product.country))
        print('countries:', [tuple(r) for r in session.execute(q)])
        q = select(Product.cpu).where(Product.cpu.like('%Z80%')).distinct().order_by(Product.cpu)
        print('Z80 family:', session.scalars(q).all())

        # a page of products by name
        q = select(Product).order_by(Product.name).offset(20).limit(5)
        print('page 5:', [(p.name, p.manufacturer.name) for p in session.scalars(q)])

        # the years of the manufacturers with the most products
        q = (select(Manufacturer.name, func.min(Product.year), func.max(Product.year))
             .join(Manufacturer.products)
             .group_by(Manufacturer.name)
             .having(func.count(Product.id) >= 6)
             .order_by(Manufacturer.name))
        print('years of the big ones:', [tuple(r) for r in session.execute(q)])


def change():
    with Session() as session:
        with session.begin():
            # rename a product through the ORM
            p = session.scalar(select(Product).where(Product.name == 'BBC Micro'))
            p.name = 'BBC Microcomputer'
            # a bulk UPDATE over every shard
            session.execute(update(Product).where(Product.cpu == '6502').values(cpu='MOS 6502'))
            # delete a manufacturer: its products go with it (delete-orphan cascade)
            m = session.scalar(select(Manufacturer).where(Manufacturer.name == 'Amstrad'))
            session.delete(m)
            # a bulk DELETE over every shard
            session.execute(delete(Product).where(Product.year < 1977))
    with Session() as session:
        print('after changes:', session.scalar(select(func.count(Product.id))), 'products,',
              session.scalar(select(func.count(Product.id)).where(Product.cpu == 'MOS 6502')),
              'with a MOS 6502')
        print(session.scalars(select(Product.name).where(Product.name.like('BBC%'))
                              .order_by(Product.name)).all())
        print(session.scalar(select(Manufacturer).where(Manufacturer.name == 'Amstrad')))


if __name__ == '__main__':
    main()
    report()
    change()
    report()
