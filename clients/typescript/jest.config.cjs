// React Native entry under Jest with React Native's own preset (its
// AppState is a jest mock the tests drive), against a real presenced
// (PRESENCED_URL, or PRESENCED_BIN started by the test) over real sockets.
module.exports = {
  preset: "@react-native/jest-preset",
  rootDir: __dirname,
  testMatch: ["<rootDir>/test/react-native/**/*.test.{ts,tsx}"],
  transform: {
    "^.+\\.(js|ts|tsx)$": ["babel-jest", { presets: ["module:@react-native/babel-preset"] }],
  },
  // The sources import "./x.js" (NodeNext); the files are x.ts.
  moduleNameMapper: { "^(\\.{1,2}/.*)\\.js$": "$1" },
  testTimeout: 30_000,
};
