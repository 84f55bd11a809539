// A matrix-js-sdk client on simplified sliding sync (MSC4186), driven by
// tests/e2e/test_sliding_sync_js.py: logs in, lists its rooms through a sliding window,
// reads their timelines, paginates one back, and waits for a message sent live.
// Prints one JSON line per step on stdout; reads "go" on stdin before waiting live.
import * as readline from "node:readline";

import * as sdk from "matrix-js-sdk";
import { SlidingSync, SlidingSyncEvent, SlidingSyncState } from "matrix-js-sdk/lib/sliding-sync.js";

const [baseUrl, user, password, liveRoom, liveBody, olderRoom] = process.argv.slice(2);
const deadline = (ms, what) =>
    new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out: ${what}`)), ms));
const say = (step, data) => process.stdout.write(JSON.stringify({ step, ...data }) + "\n");

const login = await sdk.createClient({ baseUrl }).loginRequest({
    type: "m.login.password",
    identifier: { type: "m.id.user", user },
    password,
});
const client = sdk.createClient({
    baseUrl,
    accessToken: login.access_token,
    userId: login.user_id,
    deviceId: login.device_id,
});
say("login", { user_id: login.user_id });

const lists = new Map([
    [
        "all",
        {
            ranges: [[0, 9]],
            timeline_limit: 2,
            required_state: [
                ["m.room.name", ""],
                ["m.room.create", ""],
                ["m.room.member", "$LAZY"],
            ],
        },
    ],
]);
const slidingSync = new SlidingSync(baseUrl, lists, { timeline_limit: 2 }, client, 10000);

const firstResponse = new Promise((resolve, reject) => {
    slidingSync.on(SlidingSyncEvent.Lifecycle, (state, resp, err) => {
        if (err) reject(err);
        else if (state === SlidingSyncState.Complete) resolve();
    });
});
await client.startClient({ slidingSync });
await Promise.race([firstResponse, deadline(30000, "the first sliding sync response")]);

// The client orders its room list by the server's bump stamps (Element X does the same).
const byActivity = () =>
    client
        .getRooms()
        .sort((a, b) => (b.getBumpStamp() ?? 0) - (a.getBumpStamp() ?? 0))
        .map((room) => room.roomId);
const listed = slidingSync.getListData("all");
const rooms = {};
for (const room of client.getRooms()) {
    rooms[room.roomId] = {
        name: room.name,
        timeline: room
            .getLiveTimeline()
            .getEvents()
            .filter((e) => e.getType() === "m.room.message")
            .map((e) => e.getContent().body),
    };
}
say("listed", { count: listed?.joinedCount, room_ids: byActivity(), rooms });

// Back-pagination from the prev_batch the sliding sync gave (a /messages token).
const older = client.getRoom(olderRoom);
await Promise.race([client.scrollback(older, 10), deadline(20000, "scrollback")]);
const paginated = older
    .getLiveTimeline()
    .getEvents()
    .filter((e) => e.getType() === "m.room.message")
    .map((e) => e.getContent().body);
say("paginated", { room_id: olderRoom, timeline: paginated });

const live = new Promise((resolve) => {
    client.on(sdk.RoomEvent.Timeline, (event, room, toStartOfTimeline) => {
        if (!toStartOfTimeline && room?.roomId === liveRoom && event.getContent().body === liveBody) {
            resolve(event);
        }
    });
});
say("ready", {});
const input = readline.createInterface({ input: process.stdin });
await new Promise((resolve) => input.once("line", resolve));
const event = await Promise.race([live, deadline(20000, "the live message")]);
say("live", {
    room_id: liveRoom,
    event_id: event.getId(),
    sender: event.getSender(),
});
client.stopClient();
input.close();
process.exit(0);
