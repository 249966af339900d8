"""A client in its own process (camera and microphone): connects, prints "receiving" once frames come back, then runs
until it is killed (the test kills it with SIGKILL: no goodbye reaches the server)."""

import asyncio
import sys

import cv2
import numpy as np

from mirage_desktop.serve.client import FeedAudioTrack, FeedTrack, RemoteSession
from mirage_desktop.serve.tracks import restrict_ice_addresses


async def main(url: str, token: str) -> None:
    restrict_ice_addresses(["127.0.0.1"])
    frame = np.full((128, 128, 3), 90, np.uint8)
    cv2.circle(frame, (64, 64), 30, (200, 180, 160), -1)
    said = []

    def got(img, t):
        if not said:
            said.append(1)
            print("receiving", flush=True)

    rs = RemoteSession(url, token, on_frame=got)
    await rs.connect(FeedTrack(lambda n: frame.copy(), fps=15), audio=FeedAudioTrack(lambda n: None))
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
