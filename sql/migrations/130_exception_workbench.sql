-- The exception workbench: finance assigns and resolves exceptions by hand, every action appended to an
-- audit table that is never updated. (No column defaults: a DuckLake cannot add a column with one.)
--
-- recon.exceptions.state stays the data's verdict (open | pending | resolved). A manual resolution sets it to
-- resolved with resolved_by (who) and a resolution kind; a run that later reports the item with another class
-- or other amounts reopens it (sql/recon/actions_reopened.sql, an exception_events 'reopened' row). The work
-- state finance sees (open | assigned | resolved) is derived in the marts from state and assignee.
alter table recon.exceptions add column assignee varchar;        -- who works on it (NULL: nobody yet)
alter table recon.exceptions add column resolved_by varchar;     -- who resolved it by hand; NULL: a run did
alter table recon.exceptions add column resolution_note varchar; -- why (a manual resolution's note)
alter table recon.exceptions add column resolved_on date;        -- Beijing business day of a manual resolution

-- Every action on an exception, by a person or by a run, with the exception's data at the time.
create table recon.exception_actions (
    action_id varchar not null,             -- one per exception and action
    batch_id varchar not null,              -- one per command: the rows of one bulk action share it
    exception_id varchar not null,
    action varchar not null,                -- assigned | resolved | reopened | queried | reopened_by_data
    actor varchar not null,                 -- who acted (a person; 'wxrecon' for a run)
    acted_at timestamptz not null,          -- when (the actor's clock; shown in Beijing time)
    business_date date not null,            -- the Beijing day of the action (a run: the day it reconciled)
    run_id varchar,                         -- the run that reopened it (reopened_by_data)
    from_state varchar,                     -- work state before: open | assigned | resolved
    to_state varchar,                       -- work state after
    assignee varchar,                       -- assigned: to whom
    resolution varchar,                     -- resolved: the kind; queried: the resolution it proposes
    note varchar,
    class varchar,                          -- the exception's data at the time of the action
    bill_fen bigint,
    local_fen bigint,
    notified_fen bigint,
    diff_fen bigint,
    exposure_fen bigint,
    evidence varchar                        -- queried: WeChat Pay's answer (JSON: trade state, ids, times, fen)
);
