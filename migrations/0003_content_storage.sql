-- 0003_content_storage: compress message content once, and cheaply.
--
-- A profile of COPY mta.submit spent 60% of the backend's time in
-- pglz_compress: the content was compressed when staged in mta.submit (a row
-- deleted again in the same statement) and a second time in mta.messages.
-- Staged rows now keep their content uncompressed (EXTERNAL: out of line,
-- never compressed), and mta.messages uses lz4, several times faster than
-- pglz at a similar ratio on mail text. Existing rows keep their pglz data;
-- new rows are written with lz4.
ALTER TABLE mta.submit ALTER COLUMN content SET STORAGE EXTERNAL;
ALTER TABLE mta.messages ALTER COLUMN content SET COMPRESSION lz4;
