// Only for type-checking this example in the repository, where Expo is not
// installed: expo/fetch's `fetch` has the WHATWG signature.
declare module "expo/fetch" {
  export const fetch: typeof globalThis.fetch;
}
declare module "expo" {
  import type { ComponentType } from "react";
  export function registerRootComponent(component: ComponentType): void;
}
// Expo inlines EXPO_PUBLIC_* variables at build time.
declare const process: { env: Record<string, string | undefined> };
