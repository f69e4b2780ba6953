import asyncio
import sys

sys.path.insert(0, "/work/main")
from authsvc.store.channel import Channel


async def main():
    async def addr():
        return ("127.0.0.1", 16391)

    ch = Channel(addr, setup=[], connect_timeout=0.5, reply_timeout=0.3)
    for cmds in (
        [("SET", "k", "v")],
        [("EVAL", "return redis.call('SET','k','v')", 1, "k")],
        [("EVAL", "redis.call('SET','k','v') return 1", 1, "k")],
        [("EVAL", "return redis.pcall('SET','k','v')", 1, "k")],
    ):
        try:
            print(cmds[0][:2], await ch.send(cmds))
        except Exception as e:
            print(cmds[0][:2], "raised", repr(e))
    ch.close()


asyncio.run(main())
