"""Source-face picker: quality checks with reasons, explicit consent, live switching, persistence."""

from __future__ import annotations

import cv2
import numpy as np
from PySide6.QtCore import QMimeData, QPoint, Qt, QUrl
from PySide6.QtGui import QDropEvent


def _idle(qtbot, win, timeout=15000):
    qtbot.waitUntil(lambda: not win.picker.is_busy, timeout=timeout)


def test_photo_without_a_face_is_rejected_with_the_reason(qtbot, make_window, tmp_path, no_face_image):
    asked = []
    win = make_window(consent=lambda n, t: asked.append(n) or True)
    photo = tmp_path / "coffee.png"
    cv2.imwrite(str(photo), no_face_image)
    win.picker.add_photos([str(photo)])
    qtbot.waitUntil(lambda: win.picker.last_message.startswith("Not added"), timeout=15000)
    _idle(qtbot, win)
    assert "no face found" in win.picker.last_message
    assert win.picker.message.isVisible() and "no face found" in win.picker.message.text()
    assert "✗" in win.picker.checks.text() and "no face found" in win.picker.checks.text()
    assert asked == [] and win.picker.names() == [] and win.engine.identity is None
    assert win.picker.store.names() == []


def test_face_photo_shows_passing_checks_asks_consent_and_goes_live(qtbot, make_window, grace_hopper_path):
    asked = []
    win = make_window(consent=lambda n, t: asked.append((n, t)) or True)
    win.picker.add_photos([str(grace_hopper_path)])
    qtbot.waitUntil(lambda: win.engine.identity is not None, timeout=15000)
    _idle(qtbot, win)
    name = win.engine.identity.name
    assert name == "grace_hopper" and [a[0] for a in asked] == [name]
    assert asked[0][1] is not None and not asked[0][1].isNull()  # the dialog shows the face
    checks = win.picker.checks.text()
    assert "✓" in checks and "face found" in checks and "sharp enough" in checks and "✗" not in checks
    # saved with the consent, shown in the gallery
    qtbot.waitUntil(lambda: win.picker.names() == [name], timeout=5000)
    ident = win.picker.store.load(name)
    assert ident.consent is True and ident.meta["consent"] is True
    assert win.engine.identity.consent
    qtbot.waitUntil(lambda: win.settings.source_identity == name)  # reaches the engine's settings
    assert "grace_hopper" in win.picker.active_label.text()


def test_declined_consent_is_neither_saved_nor_used(qtbot, make_window, grace_hopper_path):
    win = make_window(consent=False)
    win.picker.add_photos([str(grace_hopper_path)])
    qtbot.waitUntil(lambda: "not confirmed" in win.picker.last_message, timeout=15000)
    _idle(qtbot, win)
    assert win.engine.identity is None
    assert win.picker.store.names() == []


def test_saved_identity_without_consent_is_not_given_to_the_engine(qtbot, make_window, grace_hopper_path, settle):
    win = make_window(consent=False)
    ident = win.engine.build_identity([str(grace_hopper_path)], "Grace")
    assert ident.consent is False
    win.picker.store.save(ident)
    # and the controller refuses it outright
    assert win.controller.set_identity(ident) is None
    win.picker.refresh()
    qtbot.waitUntil(lambda: win.picker.names() == ["Grace"], timeout=5000)
    assert "needs consent" in win.picker._items["Grace"].text()
    win.picker.activate("Grace")
    qtbot.waitUntil(lambda: "not confirmed" in win.picker.last_message, timeout=5000)
    settle(win)  # nothing still on its way to the engine
    assert win.engine.identity is None
    # now the person confirms: the engine gets it and the confirmation is stored
    win.picker.ask_consent = lambda n, t: True
    win.picker.activate("Grace")
    qtbot.waitUntil(lambda: win.engine.identity is not None, timeout=5000)
    qtbot.waitUntil(lambda: win.picker.store.load("Grace").consent, timeout=5000)


def test_consent_dialog_needs_the_explicit_confirmation(qtbot):
    from mirage_desktop.gui.picker import CONSENT_TEXT, ConsentDialog

    assert CONSENT_TEXT == "I confirm I have the right to use this person's face"
    dlg = ConsentDialog("Someone")
    qtbot.addWidget(dlg)
    assert dlg.check.text() == CONSENT_TEXT
    assert not dlg.ok.isEnabled()
    dlg.accept()  # even forced, it does not accept without the tick
    assert not dlg.confirmed
    dlg.check.setChecked(True)
    assert dlg.ok.isEnabled()
    dlg.ok.click()
    assert dlg.confirmed


def test_switching_identity_while_live_changes_the_output_within_frames(qtbot, make_window, grace_hopper_path,
                                                                         astronaut, tmp_path):
    win = make_window()
    win.start()
    qtbot.waitUntil(lambda: win.engine.running, timeout=10000)
    frames = []
    win.engine.subscribe_frames(lambda pkt: frames.append(pkt.frame))
    win.picker.add_photos([str(grace_hopper_path)])
    qtbot.waitUntil(lambda: win.engine.identity is not None, timeout=15000)
    # the astronaut's face region (OpenCV finds it at about x 177-270, y 67-160)
    box = (slice(80, 150), slice(190, 260))
    qtbot.waitUntil(lambda: len(frames) > 5 and np.abs(frames[-1][box].astype(int)
                                                       - astronaut[box].astype(int)).mean() > 5, timeout=10000)
    first = frames[-1][box].copy()
    second = tmp_path / "astronaut.png"
    cv2.imwrite(str(second), astronaut)
    win.picker.add_photos([str(second)])
    qtbot.waitUntil(lambda: win.engine.identity.name == "astronaut", timeout=15000)
    n = len(frames)
    qtbot.waitUntil(lambda: len(frames) >= n + 3, timeout=5000)
    assert np.abs(frames[n + 2][box].astype(int) - first.astype(int)).mean() > 2
    assert win.engine.pipeline.latent is win.engine.latent
    # and back to the first one from the gallery
    qtbot.waitUntil(lambda: "grace_hopper" in win.picker.names(), timeout=5000)
    win.picker.activate("grace_hopper")
    qtbot.waitUntil(lambda: win.engine.identity.name == "grace_hopper", timeout=5000)


def test_identities_persist_across_restarts(qtbot, make_window, grace_hopper_path):
    win = make_window()
    win.picker.add_photos([str(grace_hopper_path)])
    qtbot.waitUntil(lambda: win.engine.identity is not None, timeout=15000)
    _idle(qtbot, win)
    win.close()
    win2 = make_window(consent=lambda n, t: (_ for _ in ()).throw(AssertionError("asked again")))
    qtbot.waitUntil(lambda: win2.picker.names() == ["grace_hopper"], timeout=5000)
    qtbot.waitUntil(lambda: win2.engine.identity is not None, timeout=5000)
    assert win2.engine.identity.name == "grace_hopper"
    assert win2.engine.latent is not None


def test_drop_photos_onto_the_picker(qtbot, make_window, grace_hopper_path, tmp_path):
    win = make_window()
    zone = win.picker.drop
    md = QMimeData()
    md.setUrls([QUrl.fromLocalFile(str(grace_hopper_path)), QUrl.fromLocalFile(str(tmp_path / "notes.txt"))])
    ev = QDropEvent(QPoint(5, 5), Qt.CopyAction, md, Qt.LeftButton, Qt.NoModifier)
    got = []
    zone.files_dropped.connect(got.append)
    zone.dropEvent(ev)
    assert got == [[str(grace_hopper_path)]]  # images only
    qtbot.waitUntil(lambda: win.engine.identity is not None, timeout=15000)


def test_two_people_with_cyrillic_names_are_two_saved_faces(qtbot, make_window, grace_hopper_path, astronaut,
                                                            tmp_path):
    """Both names slug to the same ASCII folder name; neither may replace the other."""
    import shutil

    win = make_window()
    ivan, petr = tmp_path / "Иван.jpg", tmp_path / "Пётр.jpg"
    shutil.copy(grace_hopper_path, ivan)
    cv2.imwrite(str(petr), astronaut)
    for photo, name in ((ivan, "Иван"), (petr, "Пётр")):
        win.picker.add_photos([str(photo)])
        qtbot.waitUntil(lambda: win.picker.last_message == f"Added “{name}”.", timeout=15000)
        _idle(qtbot, win)
    qtbot.waitUntil(lambda: sorted(win.picker.names()) == ["Иван", "Пётр"], timeout=5000)
    store = win.picker.store
    assert sorted(store.names()) == ["Иван", "Пётр"]
    a, b = store.load("Иван"), store.load("Пётр")
    assert (a.name, b.name) == ("Иван", "Пётр") and a.consent and b.consent
    assert float(np.dot(a.embedding, b.embedding)) < 0.99  # two different faces kept
    # the same name again is saved beside it, not over it
    win.picker.add_photos([str(ivan)])
    qtbot.waitUntil(lambda: win.picker.last_message == "Added “Иван 2”.", timeout=15000)
    _idle(qtbot, win)
    assert sorted(store.names()) == ["Иван", "Иван 2", "Пётр"]


def test_unique_name_follows_the_store_not_the_gallery(qtbot, make_window, grace_hopper_path):
    win = make_window()
    ident = win.engine.build_identity([str(grace_hopper_path)], "Ада")
    ident.consent = True
    win.picker.store.save(ident)  # saved by another window: not in this gallery yet
    assert win.picker.names() == []
    assert win.picker._unique("Ада") == "Ада 2"
    win.picker._items["Gone"] = None  # a gallery entry deleted on disk does not block the name
    assert win.picker._unique("Gone") == "Gone"


def test_the_last_face_clicked_is_the_one_used(qtbot, make_window, settle):
    import threading

    from mirage_desktop.vision.identity import SourceIdentity

    win = make_window()
    store = win.picker.store
    for i, n in enumerate(("Alice", "Bob")):
        e = np.zeros(512, np.float32)
        e[i] = 1.0
        store.save(SourceIdentity(n, e, [], None, True))
    real = store.load
    bob_is_live = threading.Event()

    def load(name, *args, **kwargs):  # Alice's folder is on a slow disk: her load ends after Bob's is in use
        if name == "Alice":
            bob_is_live.wait(60)
        return real(name, *args, **kwargs)

    store.load = load
    win.picker.activate("Alice")
    win.picker.activate("Bob")
    qtbot.waitUntil(lambda: win.engine.identity is not None, timeout=5000)
    assert win.engine.identity.name == "Bob"
    bob_is_live.set()
    settle(win)  # Alice's late load has come back, and was ignored
    assert win.engine.identity.name == "Bob"
    assert win.picker.active == "Bob" and win.settings.source_identity == "Bob"


def test_a_saved_face_with_a_broken_embedding_stays_listed_and_is_rebuilt_when_chosen(
        qtbot, make_window, grace_hopper_path, settle):
    win = make_window(consent=lambda n, t: True)
    win.picker.add_photos([str(grace_hopper_path)])
    qtbot.waitUntil(lambda: win.engine.identity is not None)
    _idle(qtbot, win)
    name = win.engine.identity.name
    good = win.engine.identity.embedding.copy()
    folder = win.picker.store._find(name)
    np.save(folder / "embedding.npy", np.full(512, np.nan, np.float32))  # a damaged file on disk
    win.engine.set_identity(None)
    win.picker.refresh()
    settle(win)
    assert win.picker.names() == [name]  # still in the gallery
    win.picker.activate(name)
    qtbot.waitUntil(lambda: win.engine.identity is not None)
    np.testing.assert_allclose(win.engine.identity.embedding, good, rtol=1e-5)  # rebuilt from the photo
    assert np.isfinite(np.load(folder / "embedding.npy")).all()  # and saved again
