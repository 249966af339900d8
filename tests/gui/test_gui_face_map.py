"""Face mapping picked from the live preview: a click on a face gives that person the source face
chosen in the picker; the preview tags them with its name; "Clear face mapping" ends it.

The window runs its real engine (OpenCV's detector finds the astronaut; synthetic ArcFace and
inswapper), so the click goes through the preview's geometry, the controller and the engine's
pick of the face under it, embedded from the live frame."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt


def _centre(view) -> tuple[float, float]:
    x1, y1, x2, y2 = view.box
    return (x1 + x2) / 2, (y1 + y2) / 2


def _chosen(win, astronaut, qtbot, name="Mirror"):
    eng = win.engine
    ident = eng.build_identity([astronaut[:, ::-1].copy()], name)
    ident.consent = True  # as the picker asks before a face is used
    win.controller.set_identity(ident)
    qtbot.waitUntil(lambda: eng.identity is not None and eng.identity.name == name)
    return ident


def test_a_click_on_a_face_in_the_preview_maps_that_person_to_the_chosen_identity(qtbot, make_window, astronaut,
                                                                                 settle):
    win = make_window()
    eng = win.engine
    _chosen(win, astronaut, qtbot)
    win.start()
    qtbot.waitUntil(lambda: eng.running and len(eng.faces_in_view()) == 1 and win.preview.image_rect is not None)
    assert not win.clear_map_btn.isEnabled() and not eng.face_sources
    (face,) = eng.faces_in_view()
    at = win.preview.frame_to_widget(*_centre(face))
    # outside "Pick faces" a click maps no one (a click to focus the window changes nothing)
    changed = []
    win.controller.face_map_changed.connect(changed.append)
    qtbot.mouseClick(win.preview, Qt.LeftButton, pos=at.toPoint())
    settle(win)  # nothing in flight: no mapping job was started
    assert "turn on 'Pick faces'" in win.last_notice and not eng.face_sources and not changed
    win.pick_faces_btn.click()
    with qtbot.waitSignal(win.controller.face_map_changed) as sig:
        qtbot.mouseClick(win.preview, Qt.LeftButton, pos=at.toPoint())
    assert sig.args == [["Mirror"]]
    # the engine maps the person under the click: their embedding, from the live picture
    (ref, ident, label), = eng.face_sources
    assert label == "Mirror" and ident is eng.identity
    photo = eng.build_identity([astronaut], "astronaut").embedding
    assert float(ref @ photo) > 0.9
    assert win.clear_map_btn.isEnabled()
    # the preview tags the mapped person with the identity's name, on their face
    qtbot.waitUntil(lambda: any(label == "Mirror" for _, label in win.preview.tags))
    (box, _), = win.preview.tags
    assert np.allclose(box, face.box, atol=0.05)
    win.clear_map_btn.click()
    qtbot.waitUntil(lambda: not eng.face_sources and not win.clear_map_btn.isEnabled())
    qtbot.waitUntil(lambda: not win.preview.tags)


def test_a_click_beside_the_faces_maps_no_one_and_says_so(qtbot, make_window, astronaut):
    win = make_window()
    eng = win.engine
    _chosen(win, astronaut, qtbot)
    win.start()
    qtbot.waitUntil(lambda: eng.running and len(eng.faces_in_view()) == 1 and win.preview.image_rect is not None)
    (face,) = eng.faces_in_view()
    u = face.box[2] + 0.5 * (1 - face.box[2])  # right of the face
    at = win.preview.frame_to_widget(u, _centre(face)[1])
    win.pick_faces_btn.click()
    with qtbot.waitSignal(win.controller.error) as sig:
        qtbot.mouseClick(win.preview, Qt.LeftButton, pos=at.toPoint())
    assert "no face under the click" in sig.args[0] and "click on a face" in sig.args[0]
    assert not eng.face_sources and not win.clear_map_btn.isEnabled()


def test_side_by_side_a_click_on_either_half_finds_the_same_point_of_the_frame(qtbot, make_window):
    win = make_window()
    win.start()
    win.view_sbs.click()
    qtbot.waitUntil(lambda: len(win.preview._panes) == 2 and win.preview.image_rect is not None)
    pv = win.preview
    for pane in (0, 1):
        pt = pv.frame_to_widget(0.25, 0.6, pane)
        u, v = pv.widget_to_frame(pt.x(), pt.y())
        assert abs(u - 0.25) < 1e-6 and abs(v - 0.6) < 1e-6
    r = pv.image_rect
    gap = pv.frame_to_widget(1.0, 0.5, 0).x() + 0.5 * (pv.frame_to_widget(0.0, 0.5, 1).x() -
                                                        pv.frame_to_widget(1.0, 0.5, 0).x())
    assert pv.widget_to_frame(gap, r.center().y()) is None  # the gap between the halves is no frame
    assert pv.widget_to_frame(r.x() - 5, r.center().y()) is None  # nor outside the picture
