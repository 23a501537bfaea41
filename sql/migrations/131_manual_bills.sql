-- Manual bills: a bill downloaded by hand from the merchant portal and loaded with `wxrecon load-bill` (the same
-- parser and checks as the API's). raw.bill_loads says how each load came (lineage: api | manual); a later API
-- download of the same day confirms a manual load (same SHA-1) or replaces it (another SHA-1), each with an
-- event. (No column default: a DuckLake cannot add a column with one; old loads all came from the API.)
alter table raw.bill_loads add column lineage varchar;
update raw.bill_loads set lineage = 'api';

create table raw.bill_load_events (
    mchid varchar not null,
    bill_type varchar not null,
    bill_date date not null,
    event varchar not null,                 -- loaded_manual | confirmed_by_api | replaced_by_api
    archive_sha1 varchar not null,          -- the load this event is about (for replaced: the API's)
    previous_sha1 varchar,                  -- the manual load it confirmed or replaced; the load a manual one replaced
    actor varchar not null,                 -- who loaded it by hand; 'wxrecon' for the API download
    event_at timestamptz not null,          -- wall-clock audit stamp
    detail varchar                          -- the file's name, row count, what changed
);
