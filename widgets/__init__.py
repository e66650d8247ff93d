"""Textual widgets of the Esper dashboard: one panel per module, each rendering one slice of a Snapshot.

They import nothing from the engine but its contracts (`esper_tui.engine.contracts`): a panel receives a
snapshot and draws it, and never reaches back. `panel.SnapshotPanel` is the redraw-on-change contract
they share and `format` the formatting they share.

    status_banner   StatusBanner      TAMIYO [compiled] banner: backend:mode or EAGER, run, forge summary
    forge_health    ForgeHealthLine   Tezzeret concurrency, queue depth, last checkpoint
    compile_queue   CompileQueue      the forge's jobs (DataTable, updated cell by cell); the selection
    breakers        BreakersPanel     circuit breakers with state colours
    wal_panel       WalPanel          write-ahead log status
    seeds           SeedsPanel        Kasmina seed slots
    training        TrainingPanel     Tolaria training line and loss / metric sparklines
    compare_*       CompareTable, CompareCurves, DecisionList: the compare screen's final table, overlaid
                    curves and decisions (they draw a Comparison of two recordings, not a snapshot)
    events          EventsPanel       the event log, newest first
    bus_panel       BusPanel          Oona: backend, link, rates, backlogs, rooms, dead letters, rejections
    strategy_picker StrategyPicker    modal to choose a compile strategy
"""
